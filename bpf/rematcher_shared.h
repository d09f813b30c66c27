/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * rematcher_shared.h: every struct, enum and limit that the XDP datapath and
 * userspace share. One copy, included by both the BPF object and C++ (which
 * static_asserts the sizes in lb/datapath.h). Fixed-width types, explicit
 * padding; a layout comment on each struct.
 *
 * Byte order: IPv4 addresses and ports are network order wherever they appear
 * in a key or a record; sequence numbers, timestamps and windows are host order.
 */
#ifndef REMATCHER_BPF_SHARED_H_
#define REMATCHER_BPF_SHARED_H_

#include <linux/types.h>

#ifdef __BPF__
#include <bpf/bpf_helpers.h>
#endif

/* A record's lock word: 0 free, 1 held. Taken only by BPF programs (the
 * datapath, and xdp_ctl on userspace's behalf), with compare-and-swap and
 * released with an atomic exchange (rm_lock/rm_unlock in rematcher.bpf.c).
 * Not bpf_spin_lock: that one saves and restores the interrupt flag and
 * costs two helper calls per acquisition, 40 ns of the 180 a spliced packet
 * took; XDP never runs in hard-interrupt context, so the flag buys nothing
 * here. Userspace never holds it: it reads and writes whole records through
 * xdp_ctl (RM_CTL_GET_*, RM_CTL_PUT_POOL), which copies them under it. */
#define RM_SPIN_LOCK __u32

/* Compile-time capacities. Runtime limits (--max_clients, --max_backends,
 * --conns_per_backend) are set below these through map sizes and config. */
#define RM_MAX_BACKENDS 64          /* backend ids 0..63 */
#define RM_MAX_POOL_PER_BACKEND 8192 /* pooled connections per backend */
#define RM_MAX_POOL (RM_MAX_BACKENDS * 64) /* default pool table size */
#define RM_NO_ID 0xffffffffu
/* client_id of an RM_EV_POOL_DEAD for a pooled connection retired by
 * verification (RM_P_VERIFY): the backend answered, so no health signal. */
#define RM_UNVERIFIED_ID 0xfffffffeu
/* How long after a release into RM_P_VERIFY a backend segment may prove
 * the connection clean: an earlier one may have been sent before a lost
 * response tail. The core probes no sooner. The same again between the
 * first answer and the second (RM_POOL_ANSWERED). */
#define RM_VERIFY_SETTLE_NS (10ULL * 1000 * 1000)

/* The receive window the LB offers a backend on a pooled connection that
 * no client reads from: once a framed response is whole and acknowledged,
 * on a client's ACKs (and on the owed ACK of a client that moved or left),
 * and in the datapath's own answers on an idle connection. The backend owes
 * nothing then, so it loses nothing; what matters is that its send window
 * is small when the next client comes. Linux takes a smaller window only
 * from a segment that acknowledges something new or starts later
 * (tcp_may_update_window), and the next client's request does neither: it
 * starts where the last client's last ACK did. Left at the last client's
 * window (megabytes after a download), it let the backend burst its whole
 * congestion window into a new client's ~64 KB; the rest was dropped and
 * waited out the backend's retransmission timer. One unit of the leg's
 * scale, not zero: a FIN still fits. */
#define RM_IDLE_WIN 1
/* The window verification opens (RM_P_VERIFY): enough for a backend held
 * back by its last client's closed window to show it owed more, and below
 * what a new Linux client offers (~64 KB), so that client's first request
 * takes over. In bytes; rm_verify_win() gives the window field. */
#define RM_VERIFY_WIN_BYTES 32768u
static inline __u16 rm_verify_win(__u8 lb_wscale) {
  __u32 w = RM_VERIFY_WIN_BYTES >> (lb_wscale & 15);
  return w ? (__u16)w : 1;
}

/* Idle-queue entries: pool id in the low 20 bits, generation above. */
#define RM_POOL_ID_BITS 20
#define RM_IDLE_ENTRY(pid, gen) (((__u32)(gen) << RM_POOL_ID_BITS) | (pid))
#define RM_IDLE_PID(e) ((e) & ((1u << RM_POOL_ID_BITS) - 1))
#define RM_IDLE_GEN(e) ((__u16)((e) >> RM_POOL_ID_BITS) & 0xfff)

/* ---------------------------------------------------------------- keys */

/* A client flow as it arrives at the LB: client -> VIP. 12 bytes. */
struct rm_flow_key {
  __u32 client_ip; /* network order */
  __u32 vip;       /* network order */
  __u16 client_port;
  __u16 vip_port;
};

/* A pooled backend connection as its packets arrive at the LB:
 * backend -> LB. 12 bytes. */
struct rm_pool_key {
  __u32 backend_ip; /* network order */
  __u32 lb_ip;      /* network order */
  __u16 backend_port;
  __u16 lb_port;
};

/* --------------------------------------------------------------- config */

/* Written by userspace into the one-element `config` array before traffic
 * flows; read by the datapath on every packet. 36 bytes. */
struct rm_config {
  __u32 vip;           /* network order */
  __u16 vip_port;      /* network order */
  __u16 mss;           /* MSS the LB advertises to clients; clients below
                          it are refused (see DESIGN.md, MSS) */
  __u8 client_wscale;  /* window shift the LB advertises to clients */
  __u8 sack_ok;        /* offer SACK to clients */
  __u8 ts_ok;          /* offer timestamps to clients */
  __u8 rematch;        /* 1: apply policy decisions at request boundaries */
  __u32 num_backends;  /* live entries in backend_list */
  __u32 events;        /* 1: emit ring-buffer events */
  __u32 max_clients;   /* admission limit (<= clients map size) */
  __u32 pool_max_uses; /* retire a pooled connection after carrying this
                          many splices, before the backend's own limit on
                          requests per connection (0: never) */
  __u32 client_window_cap; /* bytes: most the LB lets a client send ahead.
                              Every pooled connection can take this much, so
                              a rematch never turns the client's window into
                              loss at the new backend. 0: no cap. */
  __u32 reroute_margin; /* a request arriving at a boundary goes to its
                           backend's alternative (rm_backend_load::alt)
                           when the backend it would go to has at least
                           this many more requests unanswered (it may have
                           stalled since the decision). 0: never. */
  __u32 reroute_ratio_pct; /* ...and at least this percentage of the
                              alternative's count (200: twice as many;
                              0: the margin alone) */
};

/* -------------------------------------------------------------- records */

enum rm_client_state {
  RM_C_FREE = 0,
  RM_C_SYN_RCVD = 1,    /* SYN answered by the datapath, waiting for ACK */
  RM_C_ESTABLISHED = 2, /* handshake done; spliced when pool_id != NO_ID */
  RM_C_LAST_ACK = 3,    /* client FIN answered in place; waiting last ACK */
  RM_C_NAT_CLOSE = 4,   /* closing mid-exchange: plain NAT to the end,
                           the pooled connection is retired afterwards */
  RM_C_CLOSED = 5,      /* done; userspace frees after a linger */
};

/* Where a client is in its request/response exchange. */
enum rm_phase {
  RM_PH_IDLE = 0, /* no request in flight */
  RM_PH_REQ = 1,  /* client sending a request, no response byte yet */
  RM_PH_RESP = 2, /* backend answering */
};

enum rm_leg_flags {
  RM_LEG_TS = 1,   /* timestamps negotiated on this leg */
  RM_LEG_SACK = 2, /* SACK negotiated */
  RM_LEG_WS = 4,   /* window scaling negotiated */
  /* rm_pool.flags only, never a leg's: RM_P_VERIFY had its first answer
   * (pool_verify_segment); cleared when it goes idle. */
  RM_POOL_ANSWERED = 0x80,
  /* rm_pool.flags only: the ACK its last client's clean close owed it went
   * from the datapath, on that client's final ACK (close_ack_fill), so the
   * core's copy of it (RM_EV_CLIENT_LEFT) is not sent. Cleared when a
   * client next hands it back. */
  RM_POOL_ACK_SENT = 0x40,
};

/* One client connection. Indexed by client id in the `clients` array; the
 * 4-tuple maps to the id through `client_ids`. All fields under `lock`.
 * "client space" = sequence numbers of the client<->LB leg; "pool space" =
 * those of the LB<->backend pooled connection.
 * Layout: 4-byte lock, then 4-byte fields, then 8-byte fields; 224 bytes. */
struct rm_client {
  RM_SPIN_LOCK lock;
  __u32 state;       /* enum rm_client_state */
  __u32 epoch;       /* bumped at every (re)splice and on reuse of the id */
  __u32 pool_id;     /* pooled connection carrying us, RM_NO_ID if none */
  __u32 backend_id;  /* backend of pool_id, RM_NO_ID if none */
  struct rm_flow_key key;
  __u8 mac[6];       /* client's (or its gateway's) MAC */
  __u16 vlan_tci;    /* network order; 0 without a tag */
  __u8 c_wscale;     /* shift of windows the client sends */
  __u8 s_wscale;     /* shift the LB advertised to the client */
  __u8 c_flags;      /* rm_leg_flags of the client leg */
  __u8 phase;        /* enum rm_phase */

  /* client leg, client space */
  __u32 c_isn;
  __u32 s_isn;
  __u32 c_nxt;       /* next seq expected from the client */
  __u32 c_acked;     /* highest ack the client sent */
  __u32 s_nxt;       /* next seq the LB sends to the client */
  __u32 c_ts_last;   /* highest TSval received from the client */
  __u32 s_ts_last;   /* highest TSval sent to the client */

  /* current splice epoch */
  __u32 d_req;       /* C->B seq offset: pool = client + d_req */
  __u32 d_resp;      /* B->C seq offset: client = pool + d_resp */
  __u32 ts_c2b;      /* TSval offset client -> backend */
  __u32 ts_b2c;      /* TSval offset backend -> client */
  __u32 e_c_nxt;     /* c_nxt at epoch start (client space) */
  __u32 e_s_nxt;     /* s_nxt at epoch start (client space) */
  __u32 e_s_ts;      /* s_ts_last at epoch start: older TSecr belong to
                        earlier epochs */
  __u32 e_lb_ts;     /* lb_ts_last at epoch start (pool's TS space) */
  __u32 e_c_ts;      /* c_ts_last at epoch start: clamp for B->C TSecr */
  __u32 e_b_ts;      /* b_ts_last at epoch start: clamp for C->B TSecr */
  __u32 b_acked;     /* highest ack from the backend (pool space) */
  __u32 b_ts_last;   /* highest TSval from the backend */
  __u32 lb_ts_last;  /* highest TSval sent to the backend */
  __u8 b_wscale;     /* shift of windows the backend sends */
  __u8 lb_wscale;    /* shift the LB advertised to the backend */
  __u8 b_flags;      /* rm_leg_flags of the pool leg */
  __u8 fin_flags;    /* RM_FIN_* */
  __u32 c_fin_seq;   /* client space seq of the client's FIN */
  __u32 b_fin_seq;   /* pool space seq of the backend's FIN */
  struct rm_pool_key pkey; /* pooled connection's tuple (backend -> LB) */
  __u8 b_mac[6];     /* backend's MAC */
  __u16 b_vlan_tci;  /* network order */
  __u16 lb_win;      /* the client's window as a field on the backend leg
                        (sent as is, but for RM_IDLE_WIN between requests) */
  __u16 cflags;      /* RM_CF_* */

  /* request accounting */
  __u32 req_no;      /* requests started on this connection */
  __u32 rematches;
  /* Receive-window edges, so a rematch never lets the client send past what
   * the new backend connection will accept (see do_splice). */
  __u32 c_edge;      /* client space: highest ack + window the client was
                        told (its send limit) */
  __u32 b_edge;      /* pool space: highest ack + window the backend told */
  __u32 s_win;       /* last window field sent to the client */
  __u32 req_backend; /* backend the request in flight was sent to */
  __u32 b_ts_at;     /* when b_ts_last arrived (as rm_pool.be_ts_at) */
  __u32 req_end;     /* client space: where the request in flight ends by
                        its HTTP/1.x framing (head + Content-Length), when
                        RM_CF_FRAMED */
  __u32 resp_end;    /* client space: where the response in flight ends by
                        its HTTP/1.x framing, when RM_CF_RFRAMED (or
                        RM_CF_RCHUNKED | RM_CF_RTAIL); where its next
                        chunk-size line starts, when RM_CF_RCHUNKED alone */
  __u32 close_pool;  /* RM_C_LAST_ACK: the pooled connection its clean close
                        handed straight back to the idle queue, still owed
                        the ACK the close carried; the client's final ACK
                        takes it there (close_ack_fill). RM_NO_ID: none */
  __u64 req_start_ns;
  __u64 resp_first_ns;
  __u64 last_seen_ns; /* coarse clock; for idle and linger timers */
};

enum rm_client_flags {
  /* The client sent a request before acknowledging the previous response
   * (pipelining). Responses may still be owed by its backend at any later
   * boundary, so it stays on that backend for the rest of its life. */
  RM_CF_PINNED = 1,
  /* The client's last data segment carried PSH (the end of a write). */
  RM_CF_LASTPSH = 2,
  /* The client's last write was a single segment (it began after a PSH and
   * carried PSH itself): a small request. More request data right after
   * such a write, before any response, is taken for pipelining. Multi-
   * segment writes (uploads) do not set it. */
  RM_CF_SMALLWRITE = 4,
  /* The backend's last response segment (the one that took s_nxt furthest)
   * carried PSH or FIN: the end of one of its writes. A response not
   * framed whole ends at a layer-4 boundary only with it, and with the
   * client's window open (see l4_end_unsure): a backend held mid-write by
   * its congestion window sends its last segment before the pause without
   * PSH, and one held by the client's window waits for it to open (Linux
   * marks the probe that fills a small window with PSH). A client that
   * has acknowledged all it got and writes its next request then (a
   * Redis-style pipeline) is writing ahead of a response still owed: it is
   * pinned as pipelining (RM_ST_PIN_RESP_HELD) instead of moved. */
  RM_CF_RPUSHED = 8,
  /* The request in flight began, in order, with an HTTP/1.x request line
   * and a complete head: rm_client::req_end is where it ends. */
  RM_CF_FRAMED = 0x10,
  /* Pinned on proof rather than on a hint: client bytes past a framed
   * request's end before its exchange was over (two requests in one
   * segment, or a second request before any response). Such a client
   * keeps responses owed at boundaries that look clean (it writes each
   * next request as a response completes), so the pin is never lifted:
   * a move would hand the owed responses to whoever takes the pooled
   * connection next. */
  RM_CF_PROVEN = 0x20,
  /* Set by framing_check for the segment at hand: its bytes against the
   * framing rule out a clean boundary (see RM_CF_CLEAN_MASK). */
  RM_CF_HOLD = 0x40,
  /* The response to the framed request in flight began, in order, with an
   * HTTP/1.x status line and a complete head: it ends at
   * rm_client::resp_end (head + Content-Length, or the head alone for HEAD,
   * 204 and 304). New client data before the backend has sent exactly
   * that much is a request written while a response is owed (the backend
   * paused mid-body, or the client's window held it): RM_CF_PROVEN. */
  RM_CF_RFRAMED = 0x80,
  /* ...or with a chunked head: its chunks are followed by their sizes
   * (resp_track), resp_end being where the next chunk-size line starts,
   * until the last chunk ("0" CRLF CRLF) is seen: RM_CF_RTAIL, and
   * resp_end is then the response's end. A chunk-size line the walk cannot
   * read (split across segments, with extensions, trailers, more than
   * RM_CHUNKS_PER_SEG in a segment, or in bytes already passed) leaves the
   * response to the layer-4 rules (both flags cleared). */
  RM_CF_RCHUNKED = 0x1000,
  RM_CF_RTAIL = 0x2000,
  /* The framed request in flight is a HEAD: its response has no body. */
  RM_CF_REQHEAD = 0x8000,
  /* Bits 8-11: clean boundaries in a row since the client was pinned (it
   * had acknowledged the whole response and the backend the whole request,
   * and its new request starts right behind the last one). At
   * RM_UNPIN_AFTER the pin is lifted: a pin taken on a misread boundary
   * (a lost or reordered segment) no longer lasts the connection's life,
   * while a client that really pipelines shows it again within a few
   * requests and is pinned again. */
  RM_CF_CLEAN_SHIFT = 8,
  RM_CF_CLEAN_MASK = 0xf00,
};
#define RM_UNPIN_AFTER 8

enum rm_fin_flags {
  RM_FIN_C = 1,       /* client sent FIN */
  RM_FIN_B = 2,       /* backend sent FIN */
  RM_FIN_C_ACKED = 4, /* backend acked the client's FIN */
  RM_FIN_B_ACKED = 8, /* client acked the backend's FIN */
  RM_FIN_B_RST = 16,  /* the backend reset the connection mid-exchange: the
                         reset passed on may be lost, so the client is told
                         again (a segment from it is answered with RST, and
                         the core resends one: lb/client_reset.h) */
};

enum rm_pool_state {
  RM_P_FREE = 0,
  RM_P_CONNECTING = 1, /* userspace connect() in progress; SYN-ACK to kernel */
  RM_P_IDLE = 2,       /* quiescent, in its backend's idle queue */
  RM_P_BUSY = 3,       /* carrying client `owner` in epoch `owner_epoch` */
  RM_P_DEAD = 4,       /* unusable: userspace closes and replaces it */
  RM_P_VERIFY = 5,     /* handed back by a client that closed or went idle:
                          out of the idle queue until the backend shows it
                          has sent nothing beyond be_nxt (its answers to two
                          probes, see pool_verify_segment) */
  RM_P_PARKED = 6,     /* handed on by a client that moved after an
                          unframed response, with no ACK owed: quiescent,
                          but its backend still holds that client's window.
                          Out of the idle queue until the core has sent it a
                          zero window and then RM_IDLE_WIN (so the next
                          client's request offers a larger one, which Linux
                          takes) and queues it (RM_CTL_UNPARK_POOL).
                          Segments from the backend are handled as idle. */
};

/* One pooled backend connection, indexed by pool id. Its leg state (lb_nxt,
 * be_nxt, TS) is authoritative while IDLE; while BUSY the owner's client
 * record holds the live values and writes them back on release.
 * Layout: 4-byte lock, 4-byte fields, 8-byte fields; 88 bytes. */
struct rm_pool {
  RM_SPIN_LOCK lock;
  __u32 state;        /* enum rm_pool_state */
  __u32 backend_id;
  __u32 owner;        /* client id while BUSY */
  __u32 owner_epoch;
  struct rm_pool_key key;
  __u32 lb_nxt;       /* next seq the LB sends to the backend */
  __u32 be_nxt;       /* next seq the backend sends */
  __u32 lb_ts_last;   /* highest TSval the backend has seen from the LB */
  __u32 be_ts_last;   /* highest TSval seen from the backend */
  __u32 be_isn;       /* from the backend's SYN-ACK */
  __u8 lb_wscale;
  __u8 be_wscale;
  __u8 flags;         /* rm_leg_flags */
  __u8 synack_seen;
  __u16 be_mss;       /* MSS the backend advertised */
  __u16 vlan_tci;
  __u8 be_mac[6];
  __u16 gen;          /* generation of this id: idle-queue entries carry it
                         (RM_IDLE_ENTRY), so an entry left behind by a
                         retired connection never matches its successor */
  __u32 uses;         /* splices carried */
  __u32 be_edge;      /* highest ack + window the backend advertised */
  __u32 be_ts_at;     /* when be_ts_last arrived: CLOCK_MONOTONIC >> 16
                         (units of 65.5 us, mod 2^32) */
  __u64 last_used_ns; /* when it went idle (coarse clock; the precise one
                         while RM_P_VERIFY, from its release) */
};

/* Per-backend configuration, written by userspace, read by the datapath.
 * Indexed by backend id. 8 bytes; single-word fields, so no lock. */
struct rm_backend {
  __u32 ip;    /* network order */
  __u16 port;  /* network order */
  __u16 flags; /* RM_BE_* */
};

/* Per-backend load signals, written by the datapath with atomic adds (the
 * EWMAs with plain stores: a lost sample is harmless), read by userspace
 * through mmap to build the policy snapshot. 64 bytes. */
struct rm_backend_load {
  __u32 outstanding;   /* requests in flight */
  __u32 idle;          /* entries in the idle queue (atomic; may count a
                          dead entry until it is popped) */
  __u64 requests;      /* requests started */
  __u64 ewma_first_ns; /* EWMA(1/8) of request start -> first response byte */
  __u64 ewma_last_ns;  /* EWMA(1/8) of request start -> response fully acked */
  __u64 rematched_in;  /* clients moved onto this backend */
  __u64 responses;     /* responses fully acked */
  __u64 progress_ns;   /* bpf_ktime_get_ns() of the backend's last sign of
                          progress: a response began, or a request started
                          while none was unanswered. Unanswered requests
                          and no progress for a while: a stall (the core
                          flags it, RM_BACKEND_STALLED). */
  __u32 unanswered;    /* requests started whose response has not begun:
                          what the backend still has to work on. A request
                          leaves it at its response's first byte, while it
                          stays outstanding until the client acknowledges
                          the whole response (which a client with nothing
                          more to send delays: ~13 ms of ghost load per
                          request at 5,000 req/s open loop). */
  __u32 alt;           /* written by the core: where a request bound
                          here goes instead while this backend has
                          rm_config::reroute_margin more requests
                          unanswered (backend id + 1; 0: none) */
  __u64 rerouted_in;   /* requests the arrival check sent here instead of
                          the backend decided for them, which had fallen
                          behind (rm_config::reroute_margin) */
};

enum rm_backend_flags {
  RM_BE_ACTIVE = 1,   /* may receive new splices */
  RM_BE_DRAINING = 2, /* keeps its clients until their next request */
  RM_BE_CAN_GROW = 4, /* its pool is below its limit: a client that finds
                         no idle connection waits (its retransmission
                         finds one) instead of being refused */
};

/* Policy decision for one client, written by userspace, read by the
 * datapath at the client's next request boundary: (req_no << 32) |
 * (backend_id + 1). 0 = no decision. */
typedef __u64 rm_decision_t;

/* ------------------------------------------------------------- counters */

/* Indices of the per-CPU `stats` array. Append only. */
enum rm_stat {
  RM_ST_RX = 0,             /* packets seen */
  RM_ST_PASS_NOT_IP,        /* passed: not IPv4 (ARP, IPv6, ...) */
  RM_ST_PASS_NOT_TCP,       /* passed: IPv4 but not TCP */
  RM_ST_PASS_NOT_OURS,      /* passed: TCP flow we do not own */
  RM_ST_PASS_FRAGMENT,      /* passed: IPv4 fragment */
  RM_ST_PASS_POOL_SETUP,    /* passed: pooled connection handshake */
  RM_ST_TX_C2B,             /* client packet spliced to a backend */
  RM_ST_TX_B2C,             /* backend packet spliced to a client */
  RM_ST_TX_SYNACK,          /* SYN-ACK sent to a client */
  RM_ST_TX_RST,             /* RST sent to a client (refusal) */
  RM_ST_TX_FINACK,          /* FIN-ACK answered in place */
  RM_ST_TX_POOL_ACK,        /* idle pooled connection answered in place */
  RM_ST_HANDSHAKES,         /* client handshakes completed */
  RM_ST_SPLICES,            /* client put on a pooled connection */
  RM_ST_REMATCHES,          /* client moved to another backend */
  RM_ST_DECISION_APPLIED,   /* boundary found a fresh policy decision */
  RM_ST_DECISION_LATE,      /* boundary found no fresh decision */
  RM_ST_PIPELINED,          /* new data before the response was acked */
  RM_ST_CLOSED_CLEAN,       /* client closed, pool connection reused */
  RM_ST_CLOSED_RETIRE,      /* client closed mid-exchange, pool retired */
  RM_ST_DROP_MALFORMED,     /* truncated/invalid headers or options */
  RM_ST_DROP_TABLE_FULL,    /* no client slot: SYN refused with RST */
  RM_ST_DROP_NO_POOL,       /* no idle pooled connection: refused */
  RM_ST_DROP_MSS,           /* client MSS below the pool MSS: refused */
  RM_ST_DROP_STALE,         /* packet of an old epoch / unknown owner */
  RM_ST_DROP_BAD_STATE,     /* packet not valid in the flow's state */
  RM_ST_DROP_UNSUPPORTED,   /* URG, MD5/AO options, VLAN mismatch */
  RM_ST_DROP_POOL_DATA,     /* unexpected new data on an idle pool conn */
  RM_ST_POOL_DEAD,          /* pooled connection marked dead */
  RM_ST_CONSUMED,           /* handshake ACKs and pure ACKs absorbed */
  RM_ST_STALE_ACKED,        /* stale backend segment answered in place */
  RM_ST_NO_POOL_WAIT,       /* no idle pooled connection yet: first data
                               dropped while the pool grows */
  RM_ST_REMATCH_WINDOW,     /* rematch declined: the new connection's
                               receive window is smaller than what the
                               client may already send */
  RM_ST_EVENTS_LOST,        /* ring buffer full: an event was lost */
  RM_ST_PIN_RESP_UNACKED,   /* pinned: new data, response not fully acked */
  RM_ST_PIN_REQ_UNACKED,    /* pinned: new data, backend had not acked the
                               whole request */
  RM_ST_RETRY_ON_CLOSE,     /* backend closed a pooled connection before
                               taking the request: client re-spliced */
  RM_ST_REMATCH_NO_IDLE,    /* rematch skipped: no idle pooled connection
                               at the chosen backend, the client stays */
  RM_ST_UNPINNED,           /* pinned client unpinned after RM_UNPIN_AFTER
                               clean boundaries in a row */
  RM_ST_LOCK_STOLEN,        /* a record's lock was still held after
                               RM_LOCK_SPINS tries and was taken anyway
                               (never expected: holders are BPF programs
                               that cannot sleep) */
  RM_ST_POOL_VERIFY,        /* pooled connection handed back without a next
                               request (client closed or idle): verifying */
  RM_ST_POOL_VERIFIED,      /* ...the backend had nothing more: idle again */
  RM_ST_POOL_UNVERIFIED,    /* ...the backend had sent more than the client
                               got (a lost response tail): retired, so no
                               later client is handed those bytes */
  RM_ST_POOL_REATTACHED,    /* ...and given back to the client that went
                               idle waiting for them */
  RM_ST_FIRST_ELSEWHERE,    /* a first request's chosen backend had no idle
                               pooled connection: it went to one that had */
  RM_ST_ARRIVAL_REROUTED,   /* a request at a boundary went to its backend's
                               alternative: reroute_margin more requests
                               were unanswered at the one decided (or at
                               the current one, with no move decided) */
  RM_ST_PIN_FRAMING,         /* pinned for good: client bytes past a
                               framed HTTP request's end before its
                               exchange was over (RM_CF_PROVEN) */
  RM_ST_PIN_RESP_OWED,       /* pinned for good: a request began before the
                               backend had sent all of a framed response
                               (RM_CF_RFRAMED, RM_CF_RCHUNKED) */
  RM_ST_POOL_RELEASED_WHOLE, /* pooled connection handed back by a client
                               that closed or went idle after a framed
                               response that had all passed: idle at once,
                               no verification needed */
  RM_ST_POOL_PARKED,         /* pooled connection handed on after an
                               unframed response (RM_P_PARKED): its window
                               is shrunk before it is queued */
  RM_ST_PIN_RESP_HELD,       /* pinned: new data after a response not
                               framed whole that its backend may have been
                               held in: its last segment had no PSH, or the
                               client's window was shut (RM_CF_RPUSHED);
                               each is also a pinned_response_unacked */
  RM_ST_POOL_ACK_ON_CLOSE,   /* the ACK a client's clean close owed its
                               pooled connection, sent by the datapath in
                               place of that client's final ACK (the core
                               sends it only if that never comes) */
  RM_ST__MAX,
};

/* ---------------------------------------------------------------- events */

enum rm_event_type {
  RM_EV_REQ_DONE = 1,  /* backend started answering: ask the policy */
  RM_EV_POOL_ACK = 2,  /* old pooled connection needs an ACK now */
  RM_EV_POOL_DEAD = 3, /* pooled connection died: replace it */
  RM_EV_NEED_POOL = 4, /* a backend had no idle pooled connection */
  RM_EV_REQ_START = 5, /* a request started: decide its successor early;
                          RM_EV_REQ_DONE refreshes the decision. After a
                          rematch it also carries the old pooled
                          connection's owed ACK (ack_pool != RM_NO_ID),
                          or, if that connection is RM_P_PARKED, where it
                          stands for its window shrink. */
  RM_EV_POOL_VERIFY = 6, /* pooled connection entered RM_P_VERIFY: probe it */
  RM_EV_CLIENT_LEFT = 7, /* a client closed or went idle between requests
                            and its pooled connection went straight back to
                            the idle queue (RM_ST_POOL_RELEASED_WHOLE): its
                            pending decision is void. A close's ACK, owed to
                            the pooled connection, rides on it as on
                            RM_EV_POOL_ACK (pool_id; RM_NO_ID: none).
                            After a FIN it does not wake the core: the
                            datapath sends that ACK on the client's final
                            ACK (RM_POOL_ACK_SENT), the core only if the
                            final ACK never came. */
};

#define RM_EVENTS_RING (1 << 20) /* ring buffer bytes */
/* Bumped whenever a record's fields change meaning or place, even at the
 * same size: a process adopts pinned maps only of its own layout. */
#define RM_LAYOUT_VERSION 1

/* Ring-buffer event, 48 bytes. Every event may wake the core (one IPI per
 * wakeup, costly in a VM), so the datapath sends at most one waking event
 * per packet: a rematch's owed ACK rides on its REQ_START, and REQ_DONE,
 * which only refreshes an early decision, never wakes by itself. */
struct rm_event {
  __u32 type;
  __u32 client_id;
  __u32 backend_id;
  __u32 pool_id;
  __u32 req_no;
  __u32 seq;         /* RM_EV_POOL_ACK: seq/ack/tsval/tsecr to send */
  __u32 ack;
  __u32 tsval;
  __u32 tsecr;
  __u16 window;
  __u16 _pad;
  __u32 ack_pool;    /* RM_EV_REQ_START: pooled connection owed the ACK
                        above, or RM_NO_ID */
  __u32 first_byte_us; /* RM_EV_REQ_DONE: request start to first response
                          byte, microseconds */
};

/* ----------------------------------------------------------- control */

/* Commands userspace runs through BPF_PROG_TEST_RUN of `xdp_ctl`, so that
 * multi-record changes happen in the kernel under the records' locks. The
 * command sits in the test packet right after a 14-byte dummy Ethernet
 * header; the program writes its result back into `result`. */
enum rm_ctl_op {
  RM_CTL_RELEASE_IDLE = 1, /* client id: if quiescent, hand its pooled
                              connection back (idle release) */
  RM_CTL_FORCE_BACKEND = 2, /* client id, backend id: rematch at next
                               request boundary regardless of decision */
  RM_CTL_RETIRE_IDLE_POOL = 4, /* pool id (in client_id): retire it if idle
                                  since before older_than_ns */
  RM_CTL_FREE_CLIENT = 3,  /* client id: free if CLOSED or expired */
  /* Whole-record access, copied under the record's lock. The record
   * follows struct rm_ctl in the packet (RM_CTL_RECORD_MAX bytes). */
  RM_CTL_GET_CLIENT = 5,   /* client id: copy the record out */
  RM_CTL_GET_POOL = 6,     /* pool id (in client_id): copy the record out */
  RM_CTL_PUT_POOL = 7,     /* pool id (in client_id): write the record in,
                              all but its lock word */
  RM_CTL_UNPARK_POOL = 8,  /* pool id (in client_id): if RM_P_PARKED, idle
                              and into its backend's idle queue, provided
                              its lb_nxt (backend_id), be_nxt and
                              lb_ts_last (older_than_ns, high and low
                              words) and be_ts_last (now_ns) are those the
                              window shrink was sent from; result 1, 0 if
                              not parked, -3 if they differ */
};

#define RM_CTL_RECORD_MAX 256 /* >= sizeof(struct rm_client), rm_pool */

struct rm_ctl {
  __u32 op;
  __u32 client_id;
  __u32 backend_id;
  __s32 result;
  __u64 now_ns;
  __u64 older_than_ns;
};

#endif /* REMATCHER_BPF_SHARED_H_ */
