// SPDX-License-Identifier: GPL-2.0
/*
 * rematcher.bpf.c: the XDP datapath. Entry point and top-level flow only;
 * parsing, checksums and rewriting live in parse.h, csum.h and splice.h.
 *
 * Contract:
 *  - Client handshakes to the VIP are answered here (SYN-ACK in place); the
 *    LB's kernel never holds a socket for a client.
 *  - At a client's first request, and at each later request boundary where a
 *    policy decision asks for it, the client is put on an idle pooled
 *    connection taken atomically from its backend's queue (a new epoch).
 *  - Spliced segments are rewritten (MACs, IPs, ports, seq/ack, TS, SACK,
 *    window, checksums) and bounced with XDP_TX.
 *  - Packets of flows we do not own pass untouched; packets of owned flows
 *    never reach the LB's TCP stack (they are rewritten, answered or dropped).
 *  - Malformed packets are dropped before any record is looked at.
 * No lock is held across a helper call; a client record and a pool record are
 * never locked together. Cross-record changes are ordered and guarded by the
 * client's epoch, so a reader can always tell a stale owner from a live one.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "rematcher_shared.h"
#include "parse.h"
#include "splice.h"

/* ------------------------------------------------------------------ maps */

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct rm_config);
} config SEC(".maps");

/* Sizes below are defaults; userspace resizes clients/pools before load. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, struct rm_flow_key);
  __type(value, __u32);
} client_ids SEC(".maps");

/* Mapped read-only by userspace: its periodic scans (idle clients, moves
 * off a backend, `clients`) read the records in place instead of copying
 * the whole table through the syscall (Datapath::ForEachClient). */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 65536);
  __uint(map_flags, BPF_F_MMAPABLE);
  __type(key, __u32);
  __type(value, struct rm_client);
} clients SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_QUEUE);
  __uint(max_entries, 65536);
  __type(value, __u32);
} free_client_ids SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 65536);
  __uint(map_flags, BPF_F_MMAPABLE);
  __type(key, __u32);
  __type(value, rm_decision_t);
} decisions SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, RM_MAX_POOL);
  __type(key, struct rm_pool_key);
  __type(value, __u32);
} pool_ids SEC(".maps");

/* Mapped read-only by userspace for lock-free peeks (Datapath::PeekPool). */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, RM_MAX_POOL);
  __uint(map_flags, BPF_F_MMAPABLE);
  __type(key, __u32);
  __type(value, struct rm_pool);
} pools SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, RM_MAX_BACKENDS);
  __type(key, __u32);
  __type(value, struct rm_backend);
} backends SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, RM_MAX_BACKENDS);
  __uint(map_flags, BPF_F_MMAPABLE);
  __type(key, __u32);
  __type(value, struct rm_backend_load);
} backend_load SEC(".maps");

/* Active backend ids, dense, first config.num_backends entries valid. Used
 * for a client's first request, before any policy decision exists. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, RM_MAX_BACKENDS);
  __type(key, __u32);
  __type(value, __u32);
} backend_list SEC(".maps");

struct rm_idle_queue {
  __uint(type, BPF_MAP_TYPE_QUEUE);
  __uint(max_entries, RM_MAX_POOL_PER_BACKEND);
  __type(value, __u32);
};

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
  __uint(max_entries, RM_MAX_BACKENDS);
  __type(key, __u32);
  __array(values, struct rm_idle_queue);
} idle_pools SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, RM_ST__MAX);
  __type(key, __u32);
  __type(value, __u64);
} stats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} rr_cursor SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, RM_EVENTS_RING);
} events SEC(".maps");

/* Ring-buffer position up to which the core has been woken (see rb_send). */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} events_woken SEC(".maps");

/* Written by userspace only: the record layout the maps were created for
 * (RM_LAYOUT_VERSION and record sizes), read back before a new process
 * adopts maps pinned by an earlier one (DatapathOptions::pin_dir). */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} layout SEC(".maps");

/* --------------------------------------------------------------- helpers */

static __always_inline void stat_inc(__u32 idx) {
  __u64 *v = bpf_map_lookup_elem(&stats, &idx);
  if (v) *v += 1;
}

/* The records' lock (see RM_SPIN_LOCK in rematcher_shared.h). One
 * compare-and-swap when free; otherwise a bounded wait in bpf_loop. Holders
 * are BPF programs with bottom halves off (NAPI, or BPF_PROG_TEST_RUN of
 * xdp_ctl), whose critical sections are a few hundred instructions, so the
 * wait ends long before the bound; if it ever did not, the lock is taken
 * anyway and counted (RM_ST_LOCK_STOLEN) rather than the packet lost. A
 * program holds at most one record lock at a time, as with bpf_spin_lock. */
#define RM_LOCK_SPINS (1 << 16)

struct rm_lock_wait {
  __u32 *word;
  __u32 got;
};

static long rm_lock_try(__u32 i, void *arg) {
  struct rm_lock_wait *w = arg;
  __u32 *l = w->word;
  if (*(volatile __u32 *)l) return 0;
  if (__sync_val_compare_and_swap(l, 0, 1) == 0) {
    w->got = 1;
    return 1;
  }
  return 0;
}

static __noinline void rm_lock_slow(__u32 *l) {
  struct rm_lock_wait w = {.word = l, .got = 0};
  bpf_loop(RM_LOCK_SPINS, rm_lock_try, &w, 0);
  if (!w.got) {
    stat_inc(RM_ST_LOCK_STOLEN);
    __sync_lock_test_and_set(l, 1);
  }
}

static __always_inline void rm_lock(__u32 *l) {
  if (__sync_val_compare_and_swap(l, 0, 1) != 0) rm_lock_slow(l);
}

/* Set by the loader before load (read-only afterwards, so the verifier
 * keeps one branch below): the CPU keeps stores in program order after
 * earlier loads and stores (x86's TSO), so a plain store releases the lock,
 * as the kernel's own x86 spin_unlock does. Elsewhere an atomic exchange,
 * a full barrier on every architecture BPF runs on. */
const volatile __u8 rm_store_is_release = 0;
/* DatapathOptions::estimate_backend_ts_clock (see be_ticks_since). */
const volatile __u8 rm_ts_estimate = 1;

static __always_inline void rm_unlock(__u32 *l) {
  if (rm_store_is_release) {
    asm volatile("" ::: "memory"); /* keep the compiler from sinking
                                      critical-section accesses below */
    *(volatile __u32 *)l = 0;
  } else {
    __sync_lock_test_and_set(l, 0);
  }
}

/* Leg state of a pooled connection as it is handed back. */
struct rm_leg {
  __u32 lb_nxt, be_nxt, lb_ts, be_ts, be_edge;
  __u32 be_ts_at;     /* rm_ts_stamp() when be_ts arrived */
  __u32 owner, epoch; /* only the owner of this epoch may hand it back */
  __u32 retire;       /* see pool_release: 0 queue, 1/2 dead, 3 verify */
};

/* A pooled connection's leg state as it stands in the client record that
 * carries it (pool space). Call under the client's lock. */
static __always_inline void leg_from_client(struct rm_leg *leg, const struct rm_client *c) {
  leg->lb_nxt = c->c_nxt + c->d_req;
  leg->be_nxt = c->s_nxt - c->d_resp;
  leg->lb_ts = c->lb_ts_last;
  leg->be_ts = c->b_ts_last;
  leg->be_ts_at = c->b_ts_at;
  leg->be_edge = c->b_edge;
}

/* Sends one event. A wakeup costs an IPI (a VM exit here), so the core is
 * woken only when it may be asleep: when it has consumed everything up to
 * the last wakeup. The kernel's own rule (wake when the consumer has caught
 * up to this very record) would never fire behind a deferred record.
 * Deferred events (REQ_DONE) never wake; they are read with the next
 * waking event or the core's tick. The check runs between reserve and
 * submit, behind a full barrier, so a consumer that misses this record
 * before sleeping is woken; one still running sees it as reserved and
 * waits for the submit. */
static __always_inline void rb_send(const struct rm_event *ev, int defer) {
  __u32 z = 0;
  struct rm_event *rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
  if (!rec) {
    stat_inc(RM_ST_EVENTS_LOST);
    return;
  }
  __builtin_memcpy(rec, ev, sizeof(*rec));
  __u64 flags = BPF_RB_NO_WAKEUP;
  __u64 *woken = bpf_map_lookup_elem(&events_woken, &z);
  if (!defer && woken) {
    __sync_fetch_and_add(woken, 0); /* full barrier: reserve before read */
    __u64 cons = bpf_ringbuf_query(&events, BPF_RB_CONS_POS);
    if (cons >= *woken) {
      *woken = bpf_ringbuf_query(&events, BPF_RB_PROD_POS);
      flags = BPF_RB_FORCE_WAKEUP;
    }
  } else if (!defer) {
    flags = BPF_RB_FORCE_WAKEUP;
  }
  /* Deferred events alone must not fill the ring before the next tick. */
  if (defer && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > RM_EVENTS_RING / 4)
    flags = BPF_RB_FORCE_WAKEUP;
  bpf_ringbuf_submit(rec, flags);
}

/* Events (see struct rm_event): REQ_DONE only refreshes a decision made at
 * REQ_START, so it never wakes the core by itself; it is read with the next
 * waking event or tick. */
/* The helpers below marked RM_GLOBAL are global BPF functions: the
 * verifier checks each once, on its own, instead of at every call site
 * (the main program is close to the verifier's 1M-instruction budget).
 * Their arguments are scalars; what they need beyond them they look up. */
#define RM_GLOBAL __attribute__((noinline))

RM_GLOBAL int emit_ev(__u32 type, __u32 client, __u32 backend,
                      __u32 pool, __u32 req_no) {
  __u32 z = 0;
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  if (!cfg || !cfg->events) return 0;
  struct rm_event ev = {.type = type, .client_id = client,
                        .backend_id = backend, .pool_id = pool,
                        .req_no = req_no, .ack_pool = RM_NO_ID};
  rb_send(&ev, 0);
  return 0;
}

/* REQ_DONE carries the time to the first response byte (for the core's
 * latency histogram). */
RM_GLOBAL int emit_req_done(__u32 client, __u32 backend, __u32 pool,
                            __u32 req_no, __u64 first_byte_ns) {
  __u32 z = 0;
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  if (!cfg || !cfg->events) return 0;
  __u64 us = first_byte_ns / 1000;
  struct rm_event ev = {.type = RM_EV_REQ_DONE, .client_id = client,
                        .backend_id = backend, .pool_id = pool,
                        .req_no = req_no, .ack_pool = RM_NO_ID,
                        .first_byte_us = us > 0xffffffffULL ? 0xffffffff : (__u32)us};
  rb_send(&ev, 1);
  return 0;
}
#define emit(cfg, type, client, backend, pool, req_no) \
  emit_ev(type, client, backend, pool, req_no)

/* The old pooled connection's owed ACK (see DESIGN.md, "The old backend's
 * last ACK"): userspace sends it, since XDP cannot emit two packets. Its
 * window is RM_IDLE_WIN: nobody reads from that connection now (the core
 * opens rm_verify_win() instead on one being verified). */
static __always_inline void pool_ack_fill(struct rm_event *ev,
                                          const struct rm_leg *leg, __u32 pool) {
  ev->ack_pool = pool;
  ev->seq = leg->lb_nxt;
  ev->ack = leg->be_nxt;
  ev->tsval = leg->lb_ts;
  ev->tsecr = leg->be_ts;
  ev->window = RM_IDLE_WIN;
}

/* The ACK a client's clean close carried, owed to its pooled connection
 * (the close itself is answered in place): `type` RM_EV_POOL_ACK, or
 * RM_EV_CLIENT_LEFT when the connection went straight back to the idle
 * queue (no RM_EV_POOL_VERIFY tells the core the client left). */
static __noinline void emit_pool_ack(const struct rm_leg *leg, __u32 client,
                                     __u32 backend, __u32 pool, __u32 type) {
  __u32 z = 0;
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  if (!cfg || !cfg->events) return;
  struct rm_event ev = {.type = type, .client_id = client,
                        .backend_id = backend, .pool_id = pool};
  pool_ack_fill(&ev, leg, pool);
  /* A client that sent a FIN (not an RST) sends a final ACK, which takes
   * this ACK to the backend itself (close_ack_fill): the event need not
   * wake the core, whose copy is the fallback. */
  struct rm_client *c = bpf_map_lookup_elem(&clients, &client);
  int defer = type == RM_EV_CLIENT_LEFT && c &&
              *(volatile __u32 *)&c->state == RM_C_LAST_ACK;
  rb_send(&ev, defer);
}

static __always_inline __u64 now_ns(void) { return bpf_ktime_get_ns(); }

/* EWMA with weight 1/8, in ns. Plain stores: two CPUs racing lose one
 * sample, which an average shrugs off. */
static __always_inline void ewma_add(__u64 *e, __u64 sample) {
  __u64 v = *e;
  *e = v ? v - (v >> 3) + (sample >> 3) : sample;
}

/* A response began, `first_ns` after its request started: the request is
 * answered, and the backend is working. (Its stall clock does not move when
 * a response ends: that is the client's ACK, which arrives during a stall
 * too.) */
static __always_inline void backend_first_byte(__u32 bid, __u64 first_ns, __u64 now) {
  struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
  if (!bl) return;
  __sync_fetch_and_sub(&bl->unanswered, 1);
  bl->progress_ns = now;
  ewma_add(&bl->ewma_first_ns, first_ns);
}

/* A response was acknowledged in full, `last_ns` after its request started. */
static __always_inline void backend_response_done(__u32 bid, __u64 last_ns) {
  struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
  if (!bl) return;
  __sync_fetch_and_sub(&bl->outstanding, 1);
  if (!last_ns) return;
  ewma_add(&bl->ewma_last_ns, last_ns);
  __sync_fetch_and_add(&bl->responses, 1);
}

/* Load accounting. A request is outstanding on its backend from its start
 * until the client has acknowledged its whole response, and unanswered from
 * its start until the response's first byte. A backend with nothing
 * unanswered cannot be stalled: its stall clock (progress_ns) starts with
 * its first unanswered request. */
#define RM_LOAD_UNANSWERED (1u << 31) /* on a backend id: the request ends
                                         before its response began */

static __always_inline void backend_request_start(__u32 bid) {
  struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
  if (!bl) return;
  __sync_fetch_and_add(&bl->outstanding, 1);
  if (__sync_fetch_and_add(&bl->unanswered, 1) == 0) bl->progress_ns = now_ns();
  __sync_fetch_and_add(&bl->requests, 1);
}

/* outstanding += d_out, unanswered += d_unans (each -1, 0 or +1). */
static __always_inline void backend_load_add(__u32 bid, int d_out, int d_unans) {
  struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
  if (!bl) return;
  if (d_out > 0) __sync_fetch_and_add(&bl->outstanding, 1);
  if (d_out < 0) __sync_fetch_and_sub(&bl->outstanding, 1);
  if (d_unans < 0) __sync_fetch_and_sub(&bl->unanswered, 1);
}

/* A request that ends without its response being acknowledged (a reset or
 * close mid-exchange, or the record freed) is no longer outstanding on its
 * backend: otherwise each one would count against that backend for good,
 * and load-aware policies and the re-decision would shun a backend that
 * had lost a few requests (one that went away and came back). Under the
 * record's lock; returns what backend_abort() releases after unlocking,
 * or RM_NO_ID. Setting the phase idle here makes it happen once. */
static __always_inline __u32 request_abort(struct rm_client *c) {
  if (c->phase == RM_PH_IDLE) return RM_NO_ID;
  __u32 v = c->req_backend;
  if (v != RM_NO_ID && c->phase == RM_PH_REQ) v |= RM_LOAD_UNANSWERED;
  c->phase = RM_PH_IDLE;
  return v;
}

static __always_inline void backend_abort(__u32 v) {
  if (v == RM_NO_ID) return;
  backend_load_add(v & ~RM_LOAD_UNANSWERED, -1, (v & RM_LOAD_UNANSWERED) ? -1 : 0);
}


/* Puts an idle pooled connection (entry: RM_IDLE_ENTRY) in its backend's
 * idle queue; one that cannot be queued is retired, never lost silently. */
static __noinline void pool_enqueue(const struct rm_config *cfg, __u32 pid, __u32 bid,
                                    __u32 entry, __u32 owner) {
  struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
  if (!p) return;
  void *q = bpf_map_lookup_elem(&idle_pools, &bid);
  if (q && bpf_map_push_elem(q, &entry, 0) == 0) {
    struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
    if (bl) __sync_fetch_and_add(&bl->idle, 1);
  } else {
    rm_lock(&p->lock);
    if (p->state == RM_P_IDLE) p->state = RM_P_DEAD;
    rm_unlock(&p->lock);
    stat_inc(RM_ST_POOL_DEAD);
    emit(cfg, RM_EV_POOL_DEAD, owner, bid, pid, 0);
  }
}

/* Hand a pooled connection back to its backend's idle queue. Only the owner
 * of `epoch` may do so. leg->retire: 0 idle queue, 1 or 2 dead (2: the
 * backend still holds it open, userspace resets it), 3 verify first (the
 * client closed or went idle rather than starting a next request, so the
 * backend may still owe it bytes: see pool_verify_segment), 4 parked (the
 * core shrinks its window first: RM_P_PARKED). */
static __noinline void pool_release(const struct rm_config *cfg, __u32 pid,
                                    const struct rm_leg *leg) {
  __u32 owner = leg->owner, epoch = leg->epoch, retire = leg->retire;
  struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
  if (!p) return;
  int push = 0, moved = 0, verify = 0;
  __u32 bid, entry;
  __u64 now = bpf_ktime_get_coarse_ns();
  rm_lock(&p->lock);
  bid = p->backend_id;
  entry = RM_IDLE_ENTRY(pid, p->gen & 0xfff);
  if (p->state == RM_P_BUSY && p->owner == owner && p->owner_epoch == epoch) {
    p->lb_nxt = leg->lb_nxt;
    p->be_nxt = leg->be_nxt;
    p->lb_ts_last = leg->lb_ts;
    p->be_ts_last = leg->be_ts;
    p->be_ts_at = leg->be_ts_at;
    p->be_edge = leg->be_edge;
    p->owner = RM_NO_ID;
    p->flags &= ~RM_POOL_ACK_SENT;
    moved = 1;
    if ((!retire || retire >= 3) && cfg->pool_max_uses && p->uses >= cfg->pool_max_uses)
      retire = 2; /* worn out: userspace resets it, a fresh one replaces it */
    if (retire == 3) {
      /* The precise clock while verifying (pool_verify_segment times the
       * settle from it; the coarse one lags by up to a jiffy). The owner
       * stays recorded: it gets the connection back if the backend still
       * owes it bytes (pool_reattach). */
      p->state = RM_P_VERIFY;
      p->flags &= ~RM_POOL_ANSWERED;
      p->owner = owner;
      p->last_used_ns = bpf_ktime_get_ns();
      verify = 1;
    } else if (retire == 4) {
      /* Not queued: the core shrinks its window, then queues it. */
      p->state = RM_P_PARKED;
      p->last_used_ns = now;
    } else if (retire) {
      p->state = RM_P_DEAD;
    } else {
      p->state = RM_P_IDLE;
      p->last_used_ns = now;
      push = 1;
    }
  }
  rm_unlock(&p->lock);
  if (!moved) return;
  if (verify) {
    stat_inc(RM_ST_POOL_VERIFY);
    emit(cfg, RM_EV_POOL_VERIFY, owner, bid, pid, 0);
    return;
  }
  if (retire == 4) {
    stat_inc(RM_ST_POOL_PARKED);
    return; /* the core learns of it from the owed-ACK event (ack_pool) */
  }
  if (retire) {
    /* retire == 2: the backend still thinks the connection is open (no
     * FIN/RST went through it): userspace resets it. */
    stat_inc(RM_ST_POOL_DEAD);
    emit(cfg, RM_EV_POOL_DEAD, owner, bid, pid, retire == 2);
    return;
  }
  if (push) pool_enqueue(cfg, pid, bid, entry, owner);
}

static __noinline void client_free(__u32 id, const struct rm_flow_key *key,
                                   __u32 epoch) {
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  if (!c) return;
  int freed = 0;
  __u32 abort_bid = RM_NO_ID;
  rm_lock(&c->lock);
  if (c->epoch == epoch && c->state != RM_C_FREE) {
    c->state = RM_C_FREE;
    c->epoch++;
    c->pool_id = RM_NO_ID;
    abort_bid = request_abort(c);
    freed = 1;
  }
  rm_unlock(&c->lock);
  if (!freed) return;
  backend_abort(abort_bid);
  bpf_map_delete_elem(&client_ids, key);
  bpf_map_push_elem(&free_client_ids, &id, 0);
}

/* Refuse a client cleanly: RST (with ACK of what it sent, RFC 793). */
static __noinline int send_rst(struct xdp_md *ctx, struct rm_pkt *pk) {
  struct rm_reply r = {};
  if (pk->ack_f) {
    r.seq = pk->ack;
    r.flags = RM_TH_RST;
  } else {
    r.seq = 0;
    r.ack = pk->seq + pk->payload_len + pk->syn + pk->fin;
    r.flags = RM_TH_RST | RM_TH_ACK;
  }
  r.ws = 0xff;
  stat_inc(RM_ST_TX_RST);
  return rm_send_reply(ctx, pk, &r);
}

/* ------------------------------------------------------------- splicing */

#define RM_ANY_BACKEND 0xfffffffeu
/* pk_ack: the segment's ack, with RM_SPLICE_NO_ACK when it carries none. */
#define RM_SPLICE_NO_ACK (1ull << 32)
/* A rematch may let the client overrun the new connection's advertised
 * window by this much: a fresh pooled connection advertises ~64 KB in its
 * SYN-ACK and Linux queues a segment that starts inside the window. */
#define RM_WINDOW_SLACK 65535
/* Bytes of a request's first segment read for its HTTP/1.x head (a power
 * of two), and the walk's steps: one per 8 bytes, one per line, one per
 * byte of Content-Length's value. */
#define RM_HTTP_SCAN 1024
#define RM_HTTP_STEPS (RM_HTTP_SCAN / 8 + 96)
/* How long a client's first request may wait for an idle pooled connection
 * (its segments are dropped meanwhile and retransmitted) before it is
 * refused with RST: a pool that never fills must not hang clients. */
#define RM_NO_POOL_WAIT_NS 1000000000ull

/* Put client `id` (seen at epoch `epoch`) on an idle pooled connection of
 * backend `want` (or the next one round-robin for RM_ANY_BACKEND), handing
 * its current pooled connection back. `ack` is the client's ack in the
 * packet that triggered this (to ack the old backend promptly).
 * Returns 0 on success, -1 if the client stays where it is. */
/* What a splice copies out of the pool record it takes. */
struct rm_pool_take {
  __u32 lb_nxt, be_nxt, lb_ts_last, be_ts_last, be_edge;
  __u32 be_ts_at;  /* rm_ts_stamp() when be_ts_last arrived */
  __u32 be_ts_now; /* be_ts_last moved on by the time since (computed here,
                      in scratch: at its use, under the client's lock, it
                      took the call chain past the 512-byte stack limit) */
  struct rm_pool_key key;
  __u8 be_mac[6];
  __u16 vlan_tci;
  __u8 lb_wscale, be_wscale, flags, _pad;
};


/* The walk of http_head_len (its state lives in the scratch: the BPF
 * stack of the call chain that reaches it is nearly full). */
struct rm_httpwalk {
  __u32 n;         /* bytes of the segment copied to rm_scratch::http */
  __u32 off;       /* scan cursor */
  __u32 lines;     /* line ends seen */
  __u32 head_len;  /* bytes up to and including the blank line; 0: not yet */
  __u32 clen;      /* Content-Length */
  __u32 has_clen;
  __u32 in_value;  /* reading Content-Length's value, a byte a step */
  __u32 digits;
  __u32 bad;       /* not a framing this reader is sure of */
  __u32 resp;      /* reading a response head (no request line to check) */
  __u32 chunked;   /* a response's Transfer-Encoding */
};

/* Per-CPU scratch for structs too large for the 512-byte BPF stack across
 * the call chain. XDP does not nest on a CPU, so one slot per CPU is safe;
 * each user owns distinct fields. */
struct rm_scratch {
  struct rm_xlate x;    /* client_established / backend_path */
  struct rm_reply r;    /* client_established */
  struct rm_leg leg;    /* client_established / backend_path */
  struct rm_pool_take np; /* do_splice */
  struct rm_leg dleg;   /* do_splice */
  /* do_splice -> client_established: a rematch's owed ACK, sent on the
   * request's REQ_START event (one ring-buffer wakeup, not two). */
  struct rm_event pend;
  __u32 pend_ack;
  /* This CPU's coarse clock as of jiffy clk_jiffies (see coarse_now). */
  __u64 clk_jiffies;
  __u64 clk_ns;
  /* http_head_len: the first bytes of a segment that starts a request or
   * a response (RM_HTTP_SCAN), and room for the 8-byte loads that run past them. */
  __u8 http[RM_HTTP_SCAN + 64];
  __u32 flen; /* client_established: http_head_len of this segment;
                 backend_path: resp_read's */
  __u32 fhead;    /* http_head_len: the request is a HEAD */
  __u32 fchunked; /* http_head_len: the response is chunked (flen: head) */
  struct rm_httpwalk hw;
  __u32 rerouted; /* do_splice: where the arrival check sent the request */
};

/* The coarse clock (CLOCK_MONOTONIC_COARSE, what userspace compares
 * last_seen_ns with), read once per tick per CPU: it only moves at a tick,
 * and the helper costs 15 ns a packet here, bpf_jiffies64() next to
 * nothing. If this CPU reads a new jiffy just before that tick's clock
 * update lands, it keeps the older value for that tick: a few ms early. */
static __always_inline __u64 coarse_now(struct rm_scratch *sc) {
  __u64 j = bpf_jiffies64();
  if (j != sc->clk_jiffies) {
    sc->clk_ns = bpf_ktime_get_coarse_ns();
    sc->clk_jiffies = j;
  }
  return sc->clk_ns;
}

/* When a backend TSval arrived: CLOCK_MONOTONIC in units of 2^16 ns
 * (65.5 us), mod 2^32 (78 hours). Read only when a backend's TSval moves
 * on (at most once per TS tick per connection). The coarse clock would do
 * per packet for less, but it lags by up to a jiffy at both ends of the
 * interval, and an estimate short by 4 ms (HZ=250) is a 4-tick leap. */
static __always_inline __u32 rm_ts_stamp(void) {
  return (__u32)(bpf_ktime_get_ns() >> 16);
}

/* TS ticks a backend's clock advanced since rm_ts_stamp() read `since`.
 * Assumes Linux's 1 kHz TS clock: a slower one makes this an overestimate,
 * which costs nothing (the client's TSval then stands still for a while,
 * never going backwards), a faster one an underestimate, a leap forward.
 * 0 for a stamp from the future or more than 39 hours old. */
static __always_inline __u32 be_ticks_since(__u32 since) {
  if (!rm_ts_estimate) return 0;
  __s32 units = (__s32)(rm_ts_stamp() - since);
  if (units <= 0) return 0;
  return (__u32)(((__u64)units << 16) / 1000000);
}


struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct rm_scratch);
} scratch SEC(".maps");

static __always_inline struct rm_scratch *scratch_get(void) {
  __u32 z = 0;
  return bpf_map_lookup_elem(&scratch, &z);
}

/* Where a segment's payload starts, from the packet's start (for
 * bpf_xdp_load_bytes). */
static __always_inline __u32 payload_off(const struct xdp_md *ctx, const struct rm_pkt *pk) {
  return (__u32)((void *)pk->tcp - (void *)(long)ctx->data) + pk->tcp_hlen;
}

/* ------------------------------------------------- HTTP/1.x request framing
 *
 * rematcher moves a client only at a request boundary, and must not while
 * its backend still owes it a response (DESIGN.md: a pipelining client
 * stays). At layer 4 a boundary is new client data once everything sent
 * both ways is acknowledged, which is blind to two requests written in one
 * segment: the backend answers the first, the client acknowledges it and
 * writes a third, and the second's response is still to come on the pooled
 * connection the client just left, to whichever client takes it next. So
 * the segment that starts a request is read as far as its head: when it
 * begins with an HTTP/1.x request line and holds the whole head, the
 * request's length is the head's plus its Content-Length, and client bytes
 * past that end before the exchange is over prove a second request (see
 * RM_CF_PROVEN). Anything else (no request line, a head longer than
 * RM_HTTP_SCAN or than the segment, Transfer-Encoding, a bad or repeated
 * Content-Length, bare LF line ends) is "unknown": the layer-4 rules alone
 * apply, as before. */


static __always_inline __u64 rm_load64(const __u8 *b, __u32 at) {
  __u64 v;
  __builtin_memcpy(&v, b + (at & (RM_HTTP_SCAN - 1)), 8);
  return v;
}

/* "HTTP/1.1", "HTTP/1.0", "content-", "length:", "transfer", "-encodin" as
 * little-endian words. */
#define RM_W_HTTP11 0x312e312f50545448ull
#define RM_W_HTTP10 0x302e312f50545448ull
#define RM_W_CONTENT 0x2d746e65746e6f63ull
#define RM_W_LENGTH 0x003a6874676e656cull
#define RM_W_TRANSFER 0x726566736e617274ull
#define RM_W_ENCODIN 0x6e69646f636e652dull
#define RM_W_LOWER 0x2020202020202020ull
#define RM_W_ONES 0x0101010101010101ull
#define RM_W_HIGHS 0x8080808080808080ull
#define RM_W_LFS 0x0a0a0a0a0a0a0a0aull
#define RM_W_ZEROS 0x3030303030303030ull /* '0' */
#define RM_W_PAST9 0x4646464646464646ull /* + this sets a byte's top bit
                                            from ':' (one past '9') up */

/* One step of the walk: a byte of Content-Length's value, or the next line
 * end at or after w->off and what the line it ends or the one it starts
 * says. Branches are few and there are no inner loops: the verifier walks
 * the body once per distinct state. 1 stops the walk. */
static long rm_http_step(__u32 i, void *arg) {
  __u32 z = 0;
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!sc) return 1;
  struct rm_httpwalk *w = &sc->hw;
  const __u8 *b = sc->http;
  __u32 off = w->off;
  if (off >= w->n || off >= RM_HTTP_SCAN) goto unknown;
  if (w->in_value) {
    /* Optional blanks, then at most nine digits (a billion bytes or more
     * is not taken on trust), then anything else. */
    __u32 d = (__u32)b[off & (RM_HTTP_SCAN - 1)] - '0';
    if (d < 10 && !w->digits) {
      /* Up to 7 digits in one step (a byte a step costs a loop iteration
       * each): the first non-digit of the word, then the number. */
      __u64 v = rm_load64(b, off);
      __u64 nd = (~((v | RM_W_HIGHS) - RM_W_ZEROS) | (v + RM_W_PAST9) | v) & RM_W_HIGHS;
      if (nd) {
        __u64 low = (nd & -nd) >> 7;
        __u32 k = (7 - (__u32)((low * 0x0706050403020100ull) >> 56)) & 7;
        if (k) {
          /* The k digits at the word's top, '0's below, then the usual
           * pairwise combination. */
          __u64 x = ((v << (8 * (8 - k))) | (RM_W_ZEROS >> (8 * k))) - RM_W_ZEROS;
          x = (x * 10 + (x >> 8)) & 0x00ff00ff00ff00ffull;
          x = (x * 100 + (x >> 16)) & 0x0000ffff0000ffffull;
          x = (x * 10000 + (x >> 32)) & 0xffffffffull;
          w->clen = (__u32)x;
          w->digits = k;
          w->in_value = 0; /* the line end is found by the next step */
          w->off = off + k;
          return 0;
        }
      }
    }
    if (d < 10) {
      if (w->digits >= 9) goto unknown;
      w->clen = w->clen * 10 + d;
      w->digits++;
    } else if (w->digits) {
      w->in_value = 0; /* the line end is found by the next step */
      return 0;
    } else if (d != (__u32)(' ' - '0') && d != (__u32)('\t' - '0')) {
      goto unknown;
    }
    w->off = off + 1;
    return 0;
  }
  /* The first line feed in the next four words (header lines are tens of
   * bytes: the steps, not the bytes, are what costs), branch-free: each
   * word's flags (exact as to whether it holds one; within the word only
   * the lowest flag is sure to be a line feed), the first flagged word's,
   * then the lowest flagged byte's index. */
  __u64 x0 = rm_load64(b, off) ^ RM_W_LFS;
  __u64 x1 = rm_load64(b, off + 8) ^ RM_W_LFS;
  __u64 x2 = rm_load64(b, off + 16) ^ RM_W_LFS;
  __u64 x3 = rm_load64(b, off + 24) ^ RM_W_LFS;
  __u64 f0 = (x0 - RM_W_ONES) & ~x0 & RM_W_HIGHS;
  __u64 f1 = (x1 - RM_W_ONES) & ~x1 & RM_W_HIGHS;
  __u64 f2 = (x2 - RM_W_ONES) & ~x2 & RM_W_HIGHS;
  __u64 f3 = (x3 - RM_W_ONES) & ~x3 & RM_W_HIGHS;
  /* a<i>: 1 when the words before word i hold none. */
  __u64 a1 = 1 - ((f0 | -f0) >> 63);
  __u64 a2 = a1 * (1 - ((f1 | -f1) >> 63));
  __u64 a3 = a2 * (1 - ((f2 | -f2) >> 63));
  __u64 t = f0 | (f1 * a1) | (f2 * a2) | (f3 * a3);
  if (!t) {
    w->off = off + 32;
    return 0;
  }
  __u64 low = (t & -t) >> 7; /* 1 << 8k */
  __u32 p = off + 8 * (__u32)(a1 + a2 + a3) + 7 - (__u32)((low * 0x0706050403020100ull) >> 56);
  if (p >= w->n || p < 1 || b[(p - 1) & (RM_HTTP_SCAN - 1)] != '\r') goto unknown;
  w->off = p + 1;
  if (w->lines++ == 0) {
    /* The request line: METHOD SP target SP HTTP/1.x CRLF. (A status
     * line was checked by http_head_len.) */
    __u64 ver = rm_load64(b, p - 9);
    if (!w->resp && (p < 14 || (ver != RM_W_HTTP11 && ver != RM_W_HTTP10) ||
                     b[(p - 10) & (RM_HTTP_SCAN - 1)] != ' '))
      goto unknown;
  } else if (b[(p - 2) & (RM_HTTP_SCAN - 1)] == '\n') {
    w->head_len = p + 1; /* CRLF CRLF: the end of the head */
    return 1;
  }
  /* The header line that starts after this line end. */
  __u64 h = rm_load64(b, p + 1) | RM_W_LOWER;
  __u64 h2 = rm_load64(b, p + 9) | RM_W_LOWER;
  if (h == RM_W_TRANSFER && h2 == RM_W_ENCODIN) {
    /* A request's chunked body is not followed; a response's is, by its
     * last chunk (resp_read). */
    if (!w->resp) goto unknown;
    w->chunked = 1;
    return 0;
  }
  if (h != RM_W_CONTENT || (h2 & 0x00ffffffffffffffull) != RM_W_LENGTH) return 0;
  if (w->has_clen) goto unknown; /* repeated: request smuggling territory */
  w->has_clen = 1;
  w->in_value = 1;
  w->off = p + 16;
  return 0;
unknown:
  w->bad = 1;
  return 1;
}

/* "HEAD " as a little-endian word's low five bytes. */
#define RM_W_HEAD_SP 0x2044414548ull

/* The length of the HTTP/1.x message whose head a segment starts (payload
 * at `off`, `len` bytes); 0 when unknown (see above). Also left in
 * rm_scratch::flen. mode bit 0: a response, bit 1: to a HEAD request.
 * A request is its head plus Content-Length (rm_scratch::fhead says
 * whether it is a HEAD). A response to HEAD, a 204 or a 304 is its head
 * alone; a chunked one also (rm_scratch::fchunked: its end is found by
 * resp_read); else head plus Content-Length. A 1xx interim response, a
 * response with neither length nor chunks (it ends at the backend's FIN)
 * or with both, is unknown. */
RM_GLOBAL __u32 http_head_len(struct xdp_md *ctx, __u32 off, __u32 len, __u32 mode) {
  __u32 z = 0;
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!sc) return 0;
  sc->flen = 0;
  sc->fhead = 0;
  sc->fchunked = 0;
  if (off > 255 || len < 18) return 0;
  __u32 n = len < RM_HTTP_SCAN ? len : RM_HTTP_SCAN;
  if (bpf_xdp_load_bytes(ctx, off, sc->http, n)) return 0;
  const __u8 *b = sc->http;
  if (b[0] < 'A' || b[0] > 'Z') return 0;
  __u32 resp = mode & 1, nobody = 0;
  __u64 first = rm_load64(b, 0);
  if (resp) {
    /* The status line: HTTP/1.x SP 3DIGIT (SP reason) CRLF. */
    __u32 d0 = (__u32)b[9] - '0', d1 = (__u32)b[10] - '0', d2 = (__u32)b[11] - '0';
    if ((first != RM_W_HTTP11 && first != RM_W_HTTP10) || b[8] != ' ' || d0 > 9 ||
        d1 > 9 || d2 > 9 || (b[12] != ' ' && b[12] != '\r') || d0 < 2)
      return 0;
    nobody = (mode & 2) || (d1 == 0 && d2 == 4 && (d0 == 2 || d0 == 3));
  }
  struct rm_httpwalk *w = &sc->hw;
  __builtin_memset(w, 0, sizeof(*w));
  w->n = n;
  w->resp = resp;
  bpf_loop(RM_HTTP_STEPS, rm_http_step, NULL, 0);
  if (w->bad || !w->head_len) return 0;
  if (!resp) {
    sc->fhead = (first & 0xffffffffffull) == RM_W_HEAD_SP;
    sc->flen = w->head_len + w->clen;
  } else if (nobody) {
    sc->flen = w->head_len;
  } else if (w->chunked) {
    if (w->has_clen) return 0;
    sc->fchunked = 1;
    sc->flen = w->head_len;
  } else if (w->has_clen) {
    sc->flen = w->head_len + w->clen;
  }
  return sc->flen;
}

/* backend_path, before taking the client's lock, for a segment carrying
 * `len` bytes at `off` that may start the response to a framed request
 * (want bit 0; bit 1: it answers a HEAD): its head's length and whether it
 * is chunked, in the scratch (flen, fchunked), for resp_track. */
RM_GLOBAL int resp_read(struct xdp_md *ctx, __u32 off, __u32 len, __u32 want) {
  __u32 z = 0;
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!sc) return 0;
  sc->flen = 0;
  sc->fchunked = 0;
  if (want & 1) http_head_len(ctx, off, len, 1 | (want & 2));
  return 0;
}

/* Chunk-size lines read in one segment at most; a segment with more
 * leaves the response to the layer-4 rules. */
#define RM_CHUNKS_PER_SEG 8

/* One chunk-size line at `off` in the packet, `avail` bytes of the
 * segment from there: hex digits (at most 7), CRLF; for the last chunk
 * ("0") the CRLF that ends the body as well (no trailers). Returns 0 if
 * the line is not that (or not all in the segment), else its length
 * (bits 0-7), RM_CHUNK_LAST (bit 8) for the last chunk, and the chunk's
 * size (bits 32-63). A global function: verified once, however many
 * lines a segment has. */
#define RM_CHUNK_LAST 0x100ull
RM_GLOBAL __u64 chunk_line(struct xdp_md *ctx, __u32 off, __u32 avail) {
  __u8 b[16] = {};
  if (avail > 16) avail = 16;
  if (avail < 3 || off > 0xffff || bpf_xdp_load_bytes(ctx, off, b, avail)) return 0;
  __u32 size = 0, i;
  for (i = 0; i < 8; i++) {
    __u32 ch = b[i], d;
    if (ch - '0' < 10) d = ch - '0';
    else if ((ch | 0x20) - 'a' < 6) d = (ch | 0x20) - 'a' + 10;
    else break;
    size = (size << 4) | d;
  }
  if (i == 0 || i > 7 || b[i] != '\r' || b[i + 1] != '\n') return 0;
  if (size) return ((__u64)size << 32) | (i + 2);
  if (b[i + 2] != '\r' || b[i + 3] != '\n') return 0; /* trailers, or split */
  return RM_CHUNK_LAST | (i + 4);
}

/* resp_track's chunk walk over one segment (payload at `off`, client
 * space [start, start + len)), under the client's lock, from c->resp_end:
 * each chunk-size line is skipped with its chunk's data and CRLF, up to
 * the last chunk, which sets RM_CF_RTAIL with resp_end at the response's
 * end. Returns the new flags; resp_end moves. Only the lines are read,
 * never the data: bytes in a chunk cannot pass for its end. */
static __always_inline __u16 chunk_walk(struct xdp_md *ctx, struct rm_client *c, __u16 f,
                                        __u32 off, __u32 start, __u32 len) {
  __u32 pos = c->resp_end;
  for (int k = 0; k < RM_CHUNKS_PER_SEG; k++) {
    __u32 rel = pos - start;
    if (rel >= len) {
      c->resp_end = pos;
      return f;
    }
    __u64 l = chunk_line(ctx, off + rel, len - rel);
    if (!l) break;
    if (l & RM_CHUNK_LAST) {
      c->resp_end = pos + (__u32)(l & 0xff);
      return f | RM_CF_RTAIL;
    }
    pos += (__u32)(l & 0xff) + (__u32)(l >> 32) + 2;
  }
  /* Unreadable: the layer-4 rules, as for any response not framed. */
  return f & ~(RM_CF_RCHUNKED | RM_CF_RTAIL);
}

/* A chunked response whose last chunk is not seen yet: its walk goes on. */
static __always_inline int chunks_open(__u16 cflags) {
  return (cflags & (RM_CF_RCHUNKED | RM_CF_RTAIL)) == RM_CF_RCHUNKED;
}

/* backend_path, under the client's lock, for response bytes from `start`
 * (client space), `len` of them at `off` in the packet, head read by
 * resp_read: the framing of the response to the framed request in
 * flight, taken from its first bytes when they come in order (new bytes
 * only), and a chunked one's walk (any segment holding its next
 * chunk-size line, a retransmission filling a hole included). Before
 * s_nxt moves. */
RM_GLOBAL int resp_track(struct xdp_md *ctx, __u32 id, __u32 off, __u32 start, __u32 len) {
  __u32 z = 0;
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!c || !sc) return 0;
  __u16 f = c->cflags;
  if (c->phase == RM_PH_REQ && rm_after(start + len, c->s_nxt)) {
    /* The response's first bytes. */
    f &= ~(RM_CF_RFRAMED | RM_CF_RCHUNKED | RM_CF_RTAIL);
    if ((f & RM_CF_FRAMED) && start == c->s_nxt && sc->flen) {
      c->resp_end = start + sc->flen;
      f |= sc->fchunked ? RM_CF_RCHUNKED : RM_CF_RFRAMED;
    }
  }
  if (chunks_open(f)) {
    if (c->resp_end - start < len) f = chunk_walk(ctx, c, f, off, start, len);
    /* The next line is past this segment but in bytes already passed on
     * (this one came late, reordered or retransmitted): it will not be
     * seen again. Unreadable. */
    if (chunks_open(f) &&
        rm_before(c->resp_end, c->s_nxt) && !rm_before(c->resp_end, start + len))
      f &= ~RM_CF_RCHUNKED;
  }
  c->cflags = f;
  return 0;
}

/* The framed response in flight is not whole yet: short of its
 * Content-Length (RM_CF_RFRAMED), or chunked and its last chunk not seen.
 * The backend still owes the client bytes, sent or not (it may be held by
 * the client's window, or waiting out a lost ACK): a boundary, a hand-back
 * or a clean close here would strand them. Phase RESP or IDLE only (the
 * flags are the last response's). */
static __always_inline int resp_owed(const struct rm_client *c) {
  return ((c->cflags & (RM_CF_RFRAMED | RM_CF_RTAIL)) && c->s_nxt != c->resp_end) ||
         chunks_open(c->cflags);
}

/* The last response was framed and every byte of it has passed through
 * (its Content-Length, or its last chunk): the backend owes nothing for it.
 * With the client quiescent (it acked all of it, the backend all it sent),
 * a close or an idle release may hand the pooled connection straight back
 * to the idle queue, with nothing to verify. Phase RESP or IDLE only. */
static __always_inline int resp_whole(const struct rm_client *c) {
  return (c->cflags & (RM_CF_RFRAMED | RM_CF_RTAIL)) && c->s_nxt == c->resp_end;
}

/* The window client `c` last offered, as forwarded to its backend
 * (lb_win), holds less than a segment: a backend with more to send is held
 * back by it. */
static __always_inline int client_window_shut(const struct rm_client *c,
                                              const struct rm_config *cfg) {
  __u32 mss = cfg->mss ? cfg->mss : 1460;
  return ((__u32)c->lb_win << (c->lb_wscale & 15)) < mss;
}

/* Under client `id`'s lock, for a client that looks quiescent (all sent
 * both ways acknowledged): 1 if the backend may still owe it bytes all the
 * same, or expect more from it, so it is neither idle (its pooled
 * connection is not handed back) nor closing between requests (a FIN is a
 * half-close, an RST an abort, both for the backend). Either its framed
 * response is not whole (resp_owed), or its framed request is not (the
 * backend answered early), or the window it last offered, as forwarded to
 * the backend (lb_win), holds less than a segment: a backend with more to
 * send is held back by it whatever the framing says (the client is not
 * reading). */
RM_GLOBAL int backend_may_owe(__u32 id) {
  __u32 z = 0;
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  if (!c || !cfg) return 1;
  if (resp_owed(c)) return 1;
  /* The backend answered a framed request before all its body came (an
   * early 401 or 413): it still reads or discards that body, and would
   * take the next client's request for the rest of it. */
  if ((c->cflags & RM_CF_FRAMED) && rm_before(c->c_nxt, c->req_end)) return 1;
  return client_window_shut(c, cfg);
}

/* Under client `id`'s lock, for a client past its request (the caller
 * checks the phase) writing a next request with all sent both ways
 * acknowledged after a response its framing cannot end (RM_CF_RPUSHED): 1
 * if the backend may have been held in it rather than done, so the client
 * is writing ahead of a response still owed. Its last segment had no PSH
 * (held mid-write by its congestion window), or the client's window is
 * shut (client_window_shut; held by it: a Linux sender marks the probe
 * that fills a small window with PSH). A global function: checked once,
 * not on every client path. */
RM_GLOBAL int l4_end_unsure(__u32 id) {
  __u32 z = 0;
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  if (!c || !cfg) return 0;
  if (c->cflags & (RM_CF_RFRAMED | RM_CF_RCHUNKED | RM_CF_RTAIL)) return 0;
  if ((c->cflags & RM_CF_RPUSHED) && !client_window_shut(c, cfg)) return 0;
  stat_inc(RM_ST_PIN_RESP_HELD);
  return 1;
}

/* Under client `id`'s lock, for a segment on its way to the backend
 * (`more`: its length, FIN and RST ORed): the cap on the window it offers
 * the backend. A bare ACK once the framed response is whole and
 * acknowledged offers next to none (RM_IDLE_WIN, see rematcher_shared.h):
 * the backend owes nothing, and the client's next request, to whichever
 * backend, offers its real window again. Else 0, no cap. A function of
 * its own, checked once: inline, the test is walked on every path through
 * the client path (+42k verified instructions, +100k as branches). */
RM_GLOBAL __u32 idle_win_cap(__u32 id, __u32 more) {
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  if (!c || more || c->phase != RM_PH_IDLE) return 0;
  return resp_whole(c) ? RM_IDLE_WIN : 0;
}

/* Pins a client for good on its framing (RM_CF_PROVEN), counted under
 * `why` (RM_ST_PIN_FRAMING, RM_ST_PIN_RESP_OWED) and as pipelined. */
static __always_inline void pin_proven(struct rm_client *c, __u32 why) {
  c->cflags = (c->cflags | RM_CF_PINNED | RM_CF_PROVEN) & ~RM_CF_CLEAN_MASK;
  stat_inc(RM_ST_PIPELINED);
  stat_inc(why);
}

/* client_established, under the client's lock, for new data on a spliced
 * client whose request in flight is framed (RM_CF_FRAMED): its bytes
 * against the framing. During the request, bytes past its end are a second
 * request (pinned for good), bytes within it its body (not a second write:
 * RM_CF_SMALLWRITE is cleared). After a response began, the last request
 * having had more bytes than framed proves a second one; fewer mean its
 * body is still to come (after a 100 Continue, say) and this is no boundary
 * to move at (pinned, as on the layer-4 hints). Either way the data
 * cannot count as a clean boundary: RM_CF_HOLD (and 1 is returned). A
 * global function, verified once: the same branches inline took
 * client_established past the verifier's limit. */
RM_GLOBAL int framing_check(__u32 id, __u32 seq, __u32 len, __u64 pk_ack) {
  __u32 z = 0;
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!c || !sc) return 0;
  c->cflags &= ~RM_CF_HOLD;
  /* A request begins while the backend still owes some of a framed
   * response (it paused mid-body, or the client's window held it): the
   * client, having acknowledged all it got, writes ahead. Moving it would
   * hand the rest of that response to whoever takes the pooled connection
   * next, so it stays, for good (its later boundaries would look clean:
   * the rest of this response would be taken for the next one's head). */
  if (c->phase != RM_PH_REQ && !(c->cflags & RM_CF_PROVEN) && resp_owed(c)) {
    pin_proven(c, RM_ST_PIN_RESP_OWED);
    c->cflags |= RM_CF_HOLD;
    return 1;
  }
  /* A whole HTTP/1.x request, right behind the last byte, written before
   * the client acknowledged the response so far: a client that waits for
   * each response never does that, so this is pipelining, proven (the
   * layer-4 rule pins it too, but for a while). */
  if (c->phase == RM_PH_RESP && sc->flen && seq == c->c_nxt &&
      !(pk_ack & RM_SPLICE_NO_ACK) && rm_before((__u32)pk_ack, c->s_nxt) &&
      !(c->cflags & RM_CF_PROVEN)) {
    c->cflags = (c->cflags | RM_CF_PROVEN) & ~RM_CF_CLEAN_MASK;
    stat_inc(RM_ST_PIN_FRAMING);
  }
  if (!(c->cflags & RM_CF_FRAMED)) return 0;
  if (c->phase == RM_PH_REQ) {
    /* Proof needs the bytes right behind those seen: a segment after a
     * hole, or one forged far ahead, proves nothing (the next boundary
     * compares c_nxt once the hole is filled). */
    if (!rm_after(seq + len, c->req_end)) {
      c->cflags &= ~RM_CF_SMALLWRITE;
    } else if (!(c->cflags & RM_CF_PROVEN) && !rm_after(seq, c->c_nxt)) {
      pin_proven(c, RM_ST_PIN_FRAMING);
    }
    return 0;
  }
  if (rm_after(c->c_nxt, c->req_end)) {
    if (!(c->cflags & RM_CF_PROVEN)) {
      pin_proven(c, RM_ST_PIN_FRAMING);
    }
    c->cflags |= RM_CF_HOLD;
    return 1;
  }
  if (rm_before(c->c_nxt, c->req_end)) {
    if (!(c->cflags & RM_CF_PINNED)) {
      c->cflags = (c->cflags | RM_CF_PINNED) & ~RM_CF_CLEAN_MASK;
      stat_inc(RM_ST_PIPELINED);
    }
    c->cflags |= RM_CF_HOLD;
    return 1;
  }
  return 0;
}

/* client_established, under the client's lock, for a segment that starts
 * a request: its framing (http_head_len, in rm_scratch::flen), known
 * only when it starts right behind the last byte seen. A segment holding
 * more than one request proves pipelining (RM_CF_PROVEN). */
RM_GLOBAL int framing_start(__u32 id, __u32 seq, __u32 len) {
  __u32 z = 0;
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!c || !sc) return 0;
  __u32 flen = sc->flen;
  if (!flen || seq != c->c_nxt) {
    c->cflags &= ~(RM_CF_FRAMED | RM_CF_REQHEAD);
    return 0;
  }
  c->req_end = seq + flen;
  c->cflags = (c->cflags & ~RM_CF_REQHEAD) | RM_CF_FRAMED | (sc->fhead ? RM_CF_REQHEAD : 0);
  if (flen < len && !(c->cflags & RM_CF_PROVEN)) {
    pin_proven(c, RM_ST_PIN_FRAMING);
  }
  return 0;
}

/* pool_release on this CPU's scratch leg (which: 0 leg, 1 dleg). */
RM_GLOBAL int pool_release_leg(__u32 pid, __u32 which) {
  __u32 z = 0;
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!cfg || !sc) return 0;
  pool_release(cfg, pid, which ? &sc->dleg : &sc->leg);
  return 0;
}

/* Whether a backend takes new splices: active and not draining. */
static __always_inline int backend_open(const struct rm_backend *be) {
  return be && (be->flags & RM_BE_ACTIVE) && !(be->flags & RM_BE_DRAINING);
}

/* Where a request arriving now goes, given the backend `to` its client's
 * decision names (a move, or its current backend: stay): `to`, unless it
 * has at least `margin` (rm_config::reroute_margin) more requests
 * unanswered than the alternative the core keeps for it
 * (rm_backend_load::alt), and at least `ratio_pct` percent of the
 * alternative's count (rm_config::reroute_ratio_pct, 200 by default:
 * twice as many): then the alternative, if it is active and not draining.
 * The decision was made when the client's previous request started or was
 * answered, often milliseconds ago; a backend that stalled since (a pause
 * of tens of milliseconds) has its unanswered count climbing while the
 * core has yet to notice, and every request sent there meanwhile would
 * wait the pause out. Counts read unlocked: a hint. (An alternative that
 * left service since the core chose it, the client's own backend being
 * drained for instance, must not keep the client where it is.) */
RM_GLOBAL __u32 arrival_target(__u32 to, __u32 margin, __u32 ratio_pct) {
  if (!margin) return to;
  struct rm_backend_load *t = bpf_map_lookup_elem(&backend_load, &to);
  if (!t) return to;
  __u32 alt = *(volatile __u32 *)&t->alt;
  if (alt == 0 || alt - 1 == to) return to;
  alt--;
  struct rm_backend_load *a = bpf_map_lookup_elem(&backend_load, &alt);
  if (!a) return to;
  __u32 tu = *(volatile __u32 *)&t->unanswered, au = *(volatile __u32 *)&a->unanswered;
  /* Behind by the margin and by the ratio: under a closed loop's load every
   * backend has tens unanswered, a few either way being noise. */
  if (tu < au + margin || (__u64)tu * 100 < (__u64)au * ratio_pct) return to;
  if (!backend_open(bpf_map_lookup_elem(&backends, &alt))) return to;
  return alt;
}

/* A request the arrival check sent to `b` went there: counted where it
 * went (a choice whose backend had no idle pooled connection is not). */
RM_GLOBAL int count_reroute(__u32 b) {
  struct rm_backend_load *l = bpf_map_lookup_elem(&backend_load, &b);
  if (!l) return 0;
  stat_inc(RM_ST_ARRIVAL_REROUTED);
  __sync_fetch_and_add(&l->rerouted_in, 1);
  return 0;
}

/* The event that starts a request, with the owed ACK of a rematch that
 * just happened on this CPU, if any. */
RM_GLOBAL int emit_req_start(__u32 client, __u32 backend, __u32 pool,
                             __u32 req_no) {
  __u32 z = 0;
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!cfg || !sc) return 0;
  struct rm_event *ev = &sc->pend;
  if (!sc->pend_ack) ev->ack_pool = RM_NO_ID;
  sc->pend_ack = 0;
  /* Without rematching no decision is needed: only a (forced) move's
   * owed ACK is worth an event. */
  if (!cfg->events || (!cfg->rematch && ev->ack_pool == RM_NO_ID)) return 0;
  ev->type = RM_EV_REQ_START;
  ev->client_id = client;
  ev->backend_id = backend;
  ev->pool_id = pool;
  ev->req_no = req_no;
  rb_send(ev, 0);
  return 0;
}

/* A pending owed ACK whose request did not start (the packet was dropped
 * after the rematch): send it on its own. */
RM_GLOBAL int flush_pool_ack(void) {
  __u32 z = 0;
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!cfg || !sc || !sc->pend_ack) return 0;
  sc->pend_ack = 0;
  if (!cfg->events) return 0;
  struct rm_event *ev = &sc->pend;
  ev->type = RM_EV_POOL_ACK;
  ev->pool_id = ev->ack_pool;
  ev->req_no = 0;
  rb_send(ev, 0);
  return 0;
}

RM_GLOBAL int do_splice(__u32 id, __u32 epoch, __u32 want, __u64 pk_ack) {
  __u32 z0 = 0;
  const struct rm_config *cfg = bpf_map_lookup_elem(&config, &z0);
  if (!cfg) return -1;
  __u32 pid = RM_NO_ID, bid = RM_NO_ID;
  int can_grow = 0;
  struct rm_pool *p = NULL;
  struct rm_scratch *sc = scratch_get();
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  if (!c || !sc) return -1;
  struct rm_pool_take *np = &sc->np;
  struct rm_leg *leg = &sc->dleg;
  /* A client without a pooled connection (its first request) whose chosen
   * backend has none idle goes to another backend that has one rather
   * than wait: its segment would be dropped and only come back after the
   * client's retransmission timeout (200 ms or more). A client that has
   * one stays on it instead (the rematch is skipped). Read unlocked: a
   * hint, the splice below checks under the lock. */
  int first_req = *(volatile __u32 *)&c->pool_id == RM_NO_ID;
  /* The backend the arrival check chose instead of the one decided (or of
   * the round robin's turn), counted once the request is there. */
  sc->rerouted = RM_NO_ID; /* in the scratch: a local cost the chain's
                              stack its last 16 bytes */
  if (!first_req && cfg->reroute_margin && want < RM_MAX_BACKENDS) {
    /* Checked on arrival (with rerouting on, a decision to stay comes
     * here too): the client stays put, as decided or because the backend
     * decided fell behind the one it is on; or it goes to the decided
     * backend's alternative. */
    __u32 cur = *(volatile __u32 *)&c->backend_id;
    __u32 to = arrival_target(want, cfg->reroute_margin, cfg->reroute_ratio_pct);
    if (to != want) sc->rerouted = to;
    want = to;
    if (want == cur) {
      if (sc->rerouted == cur) count_reroute(cur);
      return -1;
    }
  }

#pragma clang loop unroll(disable)
  for (int i = 0; i < 6; i++) {
    if (want == RM_ANY_BACKEND) {
      __u32 z = 0;
      __u64 *cur = bpf_map_lookup_elem(&rr_cursor, &z);
      __u32 n = cfg->num_backends;
      if (!cur || n == 0) return -1;
      __u32 idx = (__u32)__sync_fetch_and_add(cur, 1) % n;
      __u32 *b = bpf_map_lookup_elem(&backend_list, &idx);
      if (!b) continue;
      /* Round robin, but on the first turn not onto a backend fallen
       * behind its alternative (the arrival check's test): a new client's
       * first request comes before any policy decision, and with short
       * connections every one whose turn fell on a stalled backend waited
       * the stall out. Later turns (the alternative had no idle pooled
       * connection) are plain round robin, so the request is served
       * wherever one is idle rather than dropped. */
      bid = *b;
      if (i == 0) {
        bid = arrival_target(*b, cfg->reroute_margin, cfg->reroute_ratio_pct);
        if (bid != *b) sc->rerouted = bid;
      }
    } else {
      bid = want;
    }
    struct rm_backend *be = bpf_map_lookup_elem(&backends, &bid);
    if (!backend_open(be)) {
      if (want != RM_ANY_BACKEND) return -1;
      continue;
    }
    void *q = bpf_map_lookup_elem(&idle_pools, &bid);
    if (!q) continue;
    if (be->flags & RM_BE_CAN_GROW) can_grow = 1;
    __u32 cand;
    if (bpf_map_pop_elem(q, &cand)) {
      emit(cfg, RM_EV_NEED_POOL, id, bid, RM_NO_ID, 0);
      sc->rerouted = RM_NO_ID;
      if (want != RM_ANY_BACKEND) {
        if (!first_req) break;
        want = RM_ANY_BACKEND;
        stat_inc(RM_ST_FIRST_ELSEWHERE);
      }
      continue;
    }
    __u32 cpid = RM_IDLE_PID(cand);
    p = bpf_map_lookup_elem(&pools, &cpid);
    if (!p) continue;
    int taken = 0;
    rm_lock(&p->lock);
    if (p->state == RM_P_IDLE && (p->gen & 0xfff) == RM_IDLE_GEN(cand)) {
      p->state = RM_P_BUSY;
      p->owner = id;
      p->owner_epoch = epoch + 1;
      p->uses++;
      np->lb_nxt = p->lb_nxt;
      np->be_nxt = p->be_nxt;
      np->lb_ts_last = p->lb_ts_last;
      np->be_ts_last = p->be_ts_last;
      np->be_ts_at = p->be_ts_at;
      np->be_ts_now = p->be_ts_last + be_ticks_since(p->be_ts_at);
      np->be_edge = p->be_edge;
      np->lb_wscale = p->lb_wscale;
      np->be_wscale = p->be_wscale;
      np->flags = p->flags;
      np->key = p->key;
      np->vlan_tci = p->vlan_tci;
      __builtin_memcpy(np->be_mac, p->be_mac, 6);
      taken = 1;
    }
    rm_unlock(&p->lock);
    if (taken) {
      struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
      if (bl) __sync_fetch_and_sub(&bl->idle, 1);
      pid = cpid;
      break;
    }
    /* A dead entry left in the queue: dropped here, try again. */
  }
  if (pid == RM_NO_ID || !p) {
    /* -2: none idle now, but a pool is growing; -1: refuse. */
    if (can_grow) return -2;
    /* A client that has a pooled connection just stays on it (a rematch
     * skipped); only one with none is refused. */
    stat_inc(c->pool_id == RM_NO_ID ? RM_ST_DROP_NO_POOL : RM_ST_REMATCH_NO_IDLE);
    return -1;
  }

  __u32 old_pid = RM_NO_ID, old_bid = RM_NO_ID;
  __builtin_memset(leg, 0, sizeof(*leg));
  int ok = 0, need_ack = 0, park = 0;
  rm_lock(&c->lock);
  if (c->epoch == epoch && c->state == RM_C_ESTABLISHED && c->pool_id != RM_NO_ID &&
      (__s32)(c->c_edge - c->c_nxt) - (__s32)(np->be_edge - np->lb_nxt) > RM_WINDOW_SLACK) {
    /* The client may already send far more than the new connection's
     * backend has advertised (its window grew on the old connection):
     * moving would turn that window into loss. Stay. */
    ok = -1;
  } else if (c->epoch == epoch && c->state == RM_C_ESTABLISHED) {
    old_pid = c->pool_id;
    old_bid = c->backend_id;
    if (old_pid != RM_NO_ID) {
      leg_from_client(leg, c);
      need_ack = !(pk_ack & RM_SPLICE_NO_ACK) && rm_after((__u32)pk_ack, c->c_acked);
      /* No ACK owed, after a response not framed whole: the client's last
       * ACK, with its own window, reached the backend uncapped
       * (idle_win_cap), and the next client's request cannot lower it.
       * Parked until the core has. (An owed ACK lowers it itself: it
       * acknowledges something new.) */
      park = !need_ack && !resp_whole(c);
      c->rematches++;
    }
    c->epoch = epoch + 1;
    c->pool_id = pid;
    c->backend_id = bid;
    c->d_req = np->lb_nxt - c->c_nxt;
    c->d_resp = c->s_nxt - np->be_nxt;
    c->ts_c2b = np->lb_ts_last - c->c_ts_last;
    /* The backend's clock ran on while the pool sat idle: offset from its
     * estimated value now, or the client would see its TSval leap ahead by
     * that idle time, and a copy of any earlier segment still in flight
     * (reordered, duplicated) would be older than PAWS allows. */
    c->ts_b2c = c->s_ts_last - np->be_ts_now;
    c->e_c_nxt = c->c_nxt;
    c->e_s_nxt = c->s_nxt;
    c->e_s_ts = c->s_ts_last;
    c->e_lb_ts = np->lb_ts_last;
    c->e_c_ts = c->c_ts_last;
    c->e_b_ts = np->be_ts_last;
    c->b_acked = np->lb_nxt;
    c->b_ts_last = np->be_ts_last;
    c->b_ts_at = np->be_ts_at;
    c->b_edge = np->be_edge;
    c->lb_ts_last = np->lb_ts_last;
    c->b_wscale = np->be_wscale;
    c->lb_wscale = np->lb_wscale;
    c->b_flags = np->flags;
    c->pkey = np->key;
    __builtin_memcpy(c->b_mac, np->be_mac, 6);
    c->b_vlan_tci = np->vlan_tci;
    ok = 1;
  }
  rm_unlock(&c->lock);

  if (ok != 1) {
    /* Declined, or the client changed under us (closed, or moved by another
     * CPU): give the connection back untouched. */
    leg->lb_nxt = np->lb_nxt;
    leg->be_nxt = np->be_nxt;
    leg->lb_ts = np->lb_ts_last;
    leg->be_ts = np->be_ts_last;
    leg->be_ts_at = np->be_ts_at;
    leg->owner = id;
    leg->be_edge = np->be_edge;
    leg->epoch = epoch + 1;
    leg->retire = 0;
    pool_release_leg(pid, 1);
    if (ok == -1) {
      stat_inc(RM_ST_REMATCH_WINDOW);
      return -3;
    }
    return -1;
  }
  stat_inc(RM_ST_SPLICES);
  if (bid == sc->rerouted) count_reroute(bid);
  if (old_pid != RM_NO_ID) {
    leg->owner = id;
    leg->epoch = epoch;
    leg->retire = park ? 4 : 0;
    pool_release_leg(old_pid, 1);
    stat_inc(RM_ST_REMATCHES);
    struct rm_backend_load *nb = bpf_map_lookup_elem(&backend_load, &bid);
    if (nb) __sync_fetch_and_add(&nb->rematched_in, 1);
    /* The client's ack of the old backend's last bytes rides on a packet
     * that now goes elsewhere; have the old one acked. A parked one is
     * told the same way: its event names it, the core shrinks its window
     * and queues it. */
    if (need_ack | park) {
      pool_ack_fill(&sc->pend, leg, old_pid);
      sc->pend.backend_id = old_bid;
      sc->pend_ack = 1;
    }
  }
  return 0;
}

/* ----------------------------------------------------------- client side */

static __noinline int client_syn_new(struct xdp_md *ctx, struct rm_pkt *pk,
                                          const struct rm_config *cfg,
                                          const struct rm_flow_key *key) {
  if (pk->unsupported || pk->payload_len) {
    /* MD5/AO cannot be translated; SYN data (TFO) is not accepted. */
    if (pk->unsupported) {
      stat_inc(RM_ST_DROP_UNSUPPORTED);
      return XDP_DROP;
    }
  }
  if (cfg->mss && (!pk->has_mss || pk->mss < cfg->mss)) {
    stat_inc(RM_ST_DROP_MSS);
    return send_rst(ctx, pk);
  }
  __u32 id;
  if (bpf_map_pop_elem(&free_client_ids, &id)) {
    stat_inc(RM_ST_DROP_TABLE_FULL);
    return send_rst(ctx, pk);
  }
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  if (!c) return XDP_DROP;

  __u32 s_isn = bpf_get_prandom_u32();
  __u32 ts0 = bpf_get_prandom_u32();
  __u8 c_flags = 0;
  if (pk->has_ts && cfg->ts_ok) c_flags |= RM_LEG_TS;
  if (pk->has_sackperm && cfg->sack_ok) c_flags |= RM_LEG_SACK;
  if (pk->has_ws) c_flags |= RM_LEG_WS;
  __u64 now = bpf_ktime_get_coarse_ns();

  rm_lock(&c->lock);
  c->state = RM_C_SYN_RCVD;
  c->epoch++;
  c->pool_id = RM_NO_ID;
  c->backend_id = RM_NO_ID;
  c->key = *key;
  __builtin_memcpy(c->mac, pk->eth->h_source, 6);
  c->vlan_tci = pk->vlan ? pk->vlan->tci : 0;
  c->c_wscale = (c_flags & RM_LEG_WS) ? pk->ws : 0;
  c->s_wscale = (c_flags & RM_LEG_WS) ? cfg->client_wscale : 0;
  c->c_flags = c_flags;
  c->phase = RM_PH_IDLE;
  c->c_isn = pk->seq;
  c->s_isn = s_isn;
  c->c_nxt = pk->seq + 1;
  c->c_acked = s_isn;
  c->s_nxt = s_isn + 1;
  c->c_ts_last = pk->tsval;
  c->s_ts_last = ts0;
  c->fin_flags = 0;
  c->req_no = 0;
  c->rematches = 0;
  c->req_start_ns = 0;
  c->resp_first_ns = 0;
  c->last_seen_ns = now;
  c->lb_win = 0;
  c->cflags = 0;
  c->req_backend = RM_NO_ID;
  c->c_edge = pk->seq + 1 + 0xffff; /* the SYN-ACK's window is unscaled */
  c->s_win = 0xffff;
  rm_unlock(&c->lock);

  if (bpf_map_update_elem(&client_ids, key, &id, BPF_NOEXIST)) {
    /* A retransmitted SYN won the race on another CPU. */
    rm_lock(&c->lock);
    c->state = RM_C_FREE;
    rm_unlock(&c->lock);
    bpf_map_push_elem(&free_client_ids, &id, 0);
    return XDP_DROP;
  }
  /* Clear any decision left by the id's previous owner. */
  rm_decision_t *d = bpf_map_lookup_elem(&decisions, &id);
  if (d) *d = 0;

  struct rm_reply r = {};
  r.seq = s_isn;
  r.ack = pk->seq + 1;
  r.flags = RM_TH_SYN | RM_TH_ACK;
  r.window = 0xffff;
  r.synack = 1;
  r.mss = cfg->mss ? cfg->mss : 1460;
  r.ts = (c_flags & RM_LEG_TS) != 0;
  r.tsval = ts0;
  r.tsecr = pk->tsval;
  r.sack_perm = (c_flags & RM_LEG_SACK) != 0;
  r.ws = (c_flags & RM_LEG_WS) ? cfg->client_wscale : 0xff;
  stat_inc(RM_ST_TX_SYNACK);
  return rm_send_reply(ctx, pk, &r);
}

/* The SYN of a flow we already hold. */
static __noinline int client_syn_again(struct xdp_md *ctx, struct rm_pkt *pk,
                                       const struct rm_config *cfg,
                                       const struct rm_flow_key *key, __u32 id) {
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  if (!c) return XDP_DROP;
  struct rm_reply r = {};
  int resend = 0, recycle = 0;
  __u32 epoch;
  rm_lock(&c->lock);
  epoch = c->epoch;
  if (c->state == RM_C_SYN_RCVD && pk->seq == c->c_isn) {
    resend = 1;
    r.seq = c->s_isn;
    r.ack = c->c_isn + 1;
    r.ts = (c->c_flags & RM_LEG_TS) != 0;
    r.tsval = c->s_ts_last;
    r.sack_perm = (c->c_flags & RM_LEG_SACK) != 0;
    r.ws = (c->c_flags & RM_LEG_WS) ? c->s_wscale : 0xff;
  } else if ((c->state == RM_C_CLOSED ||
              (c->state == RM_C_LAST_ACK && c->pool_id == RM_NO_ID)) &&
             (rm_after(pk->seq, c->c_nxt) ||
              (pk->has_ts && (c->c_flags & RM_LEG_TS) && rm_after(pk->tsval, c->c_ts_last)))) {
    /* Port reuse after a close that finished here (CLOSED: its pooled
     * connection has been handed back), while the record lingers for late
     * segments. Like TIME_WAIT (RFC 6191) a SYN is a new connection only
     * if it is newer than the old one: its sequence past the old one's
     * end, or its timestamp newer. A NAT close leaves pool_id set, so
     * CLOSED cannot require it clear: a client reusing the port at once
     * (it closed passively, so it holds no TIME_WAIT) would otherwise
     * wait out the linger in SYN retransmissions. */
    recycle = 1;
  }
  rm_unlock(&c->lock);
  if (resend) {
    r.flags = RM_TH_SYN | RM_TH_ACK;
    r.window = 0xffff;
    r.synack = 1;
    r.mss = cfg->mss ? cfg->mss : 1460;
    r.tsecr = pk->tsval;
    stat_inc(RM_ST_TX_SYNACK);
    return rm_send_reply(ctx, pk, &r);
  }
  if (recycle) {
    client_free(id, key, epoch);
    return client_syn_new(ctx, pk, cfg, key);
  }
  stat_inc(RM_ST_DROP_BAD_STATE);
  return XDP_DROP;
}

/* Everything a client segment on an established (or closing) flow needs. */
/* The client's FIN, between requests: answer FIN|ACK in place and wait
 * for its last ACK. Under the client's lock. */
static __always_inline void answer_client_fin(struct rm_client *c, struct rm_reply *r,
                                              const struct rm_pkt *pk) {
  c->state = RM_C_LAST_ACK;
  c->close_pool = RM_NO_ID;
  c->c_nxt = pk->seq + 1;
  r->seq = c->s_nxt;
  r->ack = c->c_nxt;
  r->flags = RM_TH_FIN | RM_TH_ACK;
  r->ts = (c->c_flags & RM_LEG_TS) != 0;
  r->tsval = c->s_ts_last;
  r->tsecr = pk->tsval;
  c->s_nxt++;
}

/* A client in RM_C_LAST_ACK sent its final ACK: if the pooled connection
 * its close handed back (rm_client::close_pool) still stands idle where
 * the client left it (not taken since: a splice carries the ACK itself),
 * the scratch's reply becomes the ACK that close owed it, exactly as the
 * core would send it (PoolManager::SendAck: the record's sequence and
 * timestamps, RM_IDLE_WIN), and the connection is marked so the core does
 * not send it again. Returns 1 if the reply is to go out. The reply
 * keeps the frame's VLAN tag, so the caller passes only untagged frames,
 * and only a connection without a tag qualifies (tagged, the core sends
 * the ACK). Global: checked once, not on the client path. */
RM_GLOBAL int close_ack_fill(__u32 id) {
  __u32 z = 0;
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  struct rm_scratch *sc = bpf_map_lookup_elem(&scratch, &z);
  if (!c || !sc) return 0;
  struct rm_leg at;
  rm_lock(&c->lock);
  __u32 pid = c->close_pool;
  /* Where the close left it: as the record places it (leg_from_client),
   * less the client's FIN and ours (answer_client_fin), which the backend
   * saw neither of. */
  leg_from_client(&at, c);
  __u32 lb_nxt = at.lb_nxt - 1;
  __u32 be_nxt = at.be_nxt - 1;
  int ours = c->state == RM_C_LAST_ACK;
  c->close_pool = RM_NO_ID; /* once */
  rm_unlock(&c->lock);
  if (!ours || pid == RM_NO_ID) return 0;
  struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
  if (!p) return 0;
  struct rm_reply *r = &sc->r;
  int ok;
  rm_lock(&p->lock);
  ok = p->state == RM_P_IDLE && p->lb_nxt == lb_nxt && p->be_nxt == be_nxt && !p->vlan_tci;
  if (ok) {
    p->flags |= RM_POOL_ACK_SENT;
    r->seq = lb_nxt;
    r->ack = be_nxt;
    r->window = RM_IDLE_WIN;
    r->flags = RM_TH_ACK;
    r->ts = (p->flags & RM_LEG_TS) != 0;
    r->tsval = p->lb_ts_last;
    r->tsecr = p->be_ts_last;
    __builtin_memcpy(r->dst_mac, p->be_mac, 6);
    r->saddr = p->key.lb_ip;
    r->daddr = p->key.backend_ip;
    r->sport = p->key.lb_port;
    r->dport = p->key.backend_port;
  }
  rm_unlock(&p->lock);
  if (!ok) return 0;
  r->set_mac = 1;
  r->set_addr = 1;
  return 1;
}

static __noinline int client_established(struct xdp_md *ctx, struct rm_pkt *pk,
                                         const struct rm_config *cfg,
                                         const struct rm_flow_key *key, __u32 id) {
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  if (!c) return XDP_DROP;
  __u32 len = pk->payload_len;
  __u64 now = 0;
  rm_decision_t dec = 0;
  rm_decision_t *dp = bpf_map_lookup_elem(&decisions, &id);
  if (dp) dec = *(volatile rm_decision_t *)dp;

  if (pk->urg || pk->unsupported) {
    stat_inc(RM_ST_DROP_UNSUPPORTED);
    return XDP_DROP;
  }

  struct rm_scratch *sc = scratch_get();
  if (!sc) return XDP_DROP;
  struct rm_xlate *x = &sc->x;
  struct rm_reply *r = &sc->r;
  struct rm_leg *leg = &sc->leg;
  /* No zeroing on the hot path: the forward path assigns every field of x,
   * the reply and release paths every field of r and leg they use. */
  leg->retire = 0;
  sc->pend_ack = 0;
  int verdict = XDP_TX, reply = 0, free_it = 0, started = 0, resp_done = 0;
  int retire = 0, release = 0;
  __u32 bid = RM_NO_ID, req_no = 0, done_bid = RM_NO_ID, abort_bid = RM_NO_ID;
  __u64 done_start = 0, done_first = 0;
  /* Data may start a request, whose start time feeds the latency EWMAs:
   * that needs the precise clock, which costs twice the coarse one. The
   * phase is read unlocked as a hint; if another CPU changes it meanwhile,
   * a request's start is at worst a tick early. */
  now = len && *(volatile __u8 *)&c->phase != RM_PH_REQ ? now_ns() : coarse_now(sc);
  /* The same hint: such a segment may start a request, whose HTTP framing
   * is read here, outside the lock (see http_head_len). The result is
   * kept in the scratch, not in a local live to phase B: the verifier
   * would walk every path in between twice (framed or not). */
  if (len && *(volatile __u8 *)&c->phase != RM_PH_REQ)
    http_head_len(ctx, payload_off(ctx, pk), len, 0);
  else
    sc->flen = 0;

  /* Phase A: does this segment start a request, and where should it go?
   * In the common case (no splice to make) phase B follows under the same
   * lock; only a (re)splice or a bad state drops it in between. */
  __u32 epoch, pool, want = RM_NO_ID, st_a = RM_ST__MAX, st_b = RM_ST__MAX;
  int boundary = 0, first = 0, state;
  __u64 wait_since;
  rm_lock(&c->lock);
  state = c->state;
  epoch = c->epoch;
  pool = c->pool_id;
  wait_since = c->last_seen_ns; /* last activity: the handshake, or the
                                   previous exchange */
  if (state == RM_C_SYN_RCVD) {
    if (pk->ack_f && pk->ack == c->s_isn + 1 && !pk->syn && !pk->rst) {
      c->state = state = RM_C_ESTABLISHED;
      first = 1;
    }
  }
  if (state == RM_C_ESTABLISHED && !pk->rst) {
    /* Bytes beyond any the client sent before. A segment that overtook
     * the first one of a request (reordering, or loss of that one) starts
     * it as well: the epoch's offsets are taken at c_nxt, the end of the
     * previous request, so the hole in front of it is filled in the new
     * epoch when the missing bytes arrive. */
    int new_data = len > 0 && rm_after(pk->seq + len, c->c_nxt);
    int resp_acked = c->phase == RM_PH_IDLE ||
                     (pk->ack_f && !rm_before(pk->ack, c->s_nxt));
    int req_acked = pool == RM_NO_ID || c->b_acked == c->c_nxt + c->d_req;
    /* All acknowledged, but the backend may have been held in a response
     * its framing cannot end (see RM_CF_RPUSHED): more of it may come, so
     * the response is not taken as acknowledged (l4_end_unsure counts
     * it). */
    if (new_data && c->phase != RM_PH_REQ && resp_acked && req_acked && pool != RM_NO_ID &&
        l4_end_unsure(id))
      resp_acked = 0;
    /* The framing's verdict first: it may pin, clear RM_CF_SMALLWRITE for
     * a body written after its head, or set RM_CF_HOLD (no clean boundary). */
    if (new_data && pool != RM_NO_ID)
      framing_check(id, pk->seq, len, pk->ack_f ? pk->ack : RM_SPLICE_NO_ACK);
    /* Only a segment right behind the last one can show that a second
     * write followed a complete small one; after a hole (a lost or
     * reordered segment) nothing can be told. */
    if (new_data && c->phase == RM_PH_REQ && (c->cflags & RM_CF_SMALLWRITE) &&
        pk->seq == c->c_nxt && !(c->cflags & RM_CF_PINNED) && pool != RM_NO_ID) {
      c->cflags = (c->cflags | RM_CF_PINNED) & ~RM_CF_CLEAN_MASK;
      st_a = RM_ST_PIPELINED;
    }
    if (new_data && c->phase != RM_PH_REQ) {
      if (!(resp_acked && req_acked) && pool != RM_NO_ID) {
        /* New data before the previous exchange is complete: a pipelining
         * client. It stays where it is from now on; this still starts a
         * request (accounting, and no second verdict on its later
         * segments). */
        c->cflags = (c->cflags | RM_CF_PINNED) & ~RM_CF_CLEAN_MASK;
        st_a = RM_ST_PIPELINED;
        st_b = resp_acked ? RM_ST_PIN_REQ_UNACKED : RM_ST_PIN_RESP_UNACKED;
      } else if ((c->cflags & RM_CF_PINNED) && !(c->cflags & (RM_CF_PROVEN | RM_CF_HOLD)) &&
                 pool != RM_NO_ID) {
        /* A pinned client at a clean boundary (see RM_CF_CLEAN_MASK). */
        __u16 n = ((c->cflags & RM_CF_CLEAN_MASK) >> RM_CF_CLEAN_SHIFT) + 1;
        if (pk->seq != c->c_nxt) n = 0;
        if (n >= RM_UNPIN_AFTER) {
          c->cflags &= ~(RM_CF_PINNED | RM_CF_CLEAN_MASK);
          st_b = RM_ST_UNPINNED;
        } else {
          c->cflags = (c->cflags & ~RM_CF_CLEAN_MASK) | (n << RM_CF_CLEAN_SHIFT);
        }
      }
      if ((c->cflags & RM_CF_PINNED) && pool != RM_NO_ID) {
        /* A pipelining client: a request starts, but it stays put. */
        boundary = 1;
      } else if (resp_acked && req_acked) {
        boundary = 1;
        __u32 next = c->req_no + 1;
        int fresh = dec && (__u32)(dec >> 32) == next;
        if (fresh && cfg->rematch) want = (__u32)dec - 1;
        else if (pool == RM_NO_ID) want = RM_ANY_BACKEND;
        /* A decision to stay is still checked on arrival (do_splice,
         * arrival_target) when rerouting is on. */
        if (pool != RM_NO_ID && want == c->backend_id && !cfg->reroute_margin) want = RM_NO_ID;
        if (pool != RM_NO_ID && next > 1 && cfg->rematch)
          st_a = fresh ? RM_ST_DECISION_APPLIED : RM_ST_DECISION_LATE;
      }
    }
  }
  int bad = state == RM_C_SYN_RCVD || state == RM_C_FREE || state == RM_C_CLOSED;
  if (bad || want != RM_NO_ID) {
    rm_unlock(&c->lock);
    if (st_a != RM_ST__MAX) stat_inc(st_a);
    st_a = RM_ST__MAX;
    if (first) stat_inc(RM_ST_HANDSHAKES);
    first = 0;
    if (bad) {
      /* Reset by its backend, yet the client still talks: the RST passed
       * on was lost, or its seq was past what the client had (data lost
       * ahead of it) and this is the challenge ACK saying where it is.
       * Tell it again, as its own stack would: RST at the seq it acks.
       * (Read unlocked: the flag is set once, with the state, for good.) */
      if (state == RM_C_CLOSED && !pk->rst &&
          (*(volatile __u8 *)&c->fin_flags & RM_FIN_B_RST))
        return send_rst(ctx, pk);
      stat_inc(RM_ST_DROP_BAD_STATE);
      return XDP_DROP;
    }
    int rs = do_splice(id, epoch, want, pk->ack_f ? pk->ack : RM_SPLICE_NO_ACK);
    if (rs == 0) {
      epoch++;
    } else if (pool == RM_NO_ID && rs == -2 && now - wait_since < RM_NO_POOL_WAIT_NS) {
      /* No idle pooled connection this instant, but one is being opened:
       * drop the segment, the client's retransmission will find it. The
       * wait is bounded: after RM_NO_POOL_WAIT_NS the client is refused. */
      stat_inc(RM_ST_NO_POOL_WAIT);
      return XDP_DROP;
    } else if (pool == RM_NO_ID) {
      /* Nowhere to send the first request: refuse cleanly. */
      client_free(id, key, epoch);
      return send_rst(ctx, pk);
    }
    /* Phase B: update the trackers and take a consistent copy. */
    rm_lock(&c->lock);
    if (c->epoch != epoch) {
      rm_unlock(&c->lock);
      stat_inc(RM_ST_DROP_STALE);
      flush_pool_ack();
      return XDP_DROP;
    }
  }
  c->last_seen_ns = now;
  state = c->state;
  pool = c->pool_id;
  bid = c->backend_id;

  if (state == RM_C_LAST_ACK) {
    /* We answered the client's FIN; this is its last ACK or a retransmit. */
    if (pk->fin) {
      reply = 1;
      r->seq = c->s_nxt - 1;
      r->ack = c->c_nxt;
      r->flags = RM_TH_FIN | RM_TH_ACK;
      r->ts = (c->c_flags & RM_LEG_TS) != 0;
      r->tsval = c->s_ts_last;
      r->tsecr = pk->tsval;
    } else if (pk->rst || (pk->ack_f && !rm_before(pk->ack, c->s_nxt))) {
      free_it = 1;
    }
    verdict = XDP_DROP;
    goto unlock;
  }

  if (pool == RM_NO_ID) {
    /* Established, not on any pooled connection (handshake ACK, or idle
     * after an idle release). Absorb ACKs, answer FIN and keepalives. */
    if (pk->ack_f && rm_after(pk->ack, c->c_acked) && !rm_after(pk->ack, c->s_nxt))
      c->c_acked = pk->ack;
    if (pk->has_ts && rm_after(pk->tsval, c->c_ts_last)) c->c_ts_last = pk->tsval;
    if (pk->rst) {
      free_it = 1;
    } else if (pk->fin && pk->seq == c->c_nxt && len == 0) {
      answer_client_fin(c, r, pk);
      reply = 1;
      st_b = RM_ST_CLOSED_CLEAN;
    } else if (len == 0 && rm_before(pk->seq, c->c_nxt)) {
      /* keepalive probe */
      reply = 1;
      r->seq = c->s_nxt;
      r->ack = c->c_nxt;
      r->flags = RM_TH_ACK;
      r->ts = (c->c_flags & RM_LEG_TS) != 0;
      r->tsval = c->s_ts_last;
      r->tsecr = pk->tsval;
    }
    if (!reply) st_b = RM_ST_CONSUMED;
    verdict = XDP_DROP;
    goto unlock;
  }

  /* Spliced. Client RST or FIN may end the exchange here. Not while a
   * framed response is owed, or the client's window holds the backend
   * back: a FIN then is a half-close (the backend gets it and finishes), an
   * RST an abort (the backend gets it too). */
  int quiescent = c->phase != RM_PH_REQ && pk->ack_f &&
                  !rm_before(pk->ack, c->s_nxt) &&
                  c->b_acked == c->c_nxt + c->d_req &&
                  pk->seq == c->c_nxt && len == 0 && !(c->fin_flags & RM_FIN_B);
  if (state == RM_C_ESTABLISHED && (pk->rst || pk->fin) && quiescent && !backend_may_owe(id)) {
    /* Clean close between requests: keep the pooled connection, at once
     * if its last response was framed and whole, else once the backend
     * shows it owes nothing more (pool_verify_segment). */
    leg_from_client(leg, c);
    leg->retire = resp_whole(c) ? 0 : 3;
    release = 1;
    c->pool_id = RM_NO_ID;
    c->backend_id = RM_NO_ID;
    if (c->phase == RM_PH_RESP) {
      resp_done = 1;
      done_bid = c->req_backend;
      done_start = c->req_start_ns;
      done_first = c->resp_first_ns;
    }
    c->phase = RM_PH_IDLE;
    if (pk->rst) {
      free_it = 1;
    } else {
      answer_client_fin(c, r, pk);
      reply = 1;
      /* Idle at once: its owed ACK can replace the final ACK. */
      if (!leg->retire) c->close_pool = pool;
    }
    st_b = RM_ST_CLOSED_CLEAN;
    verdict = XDP_DROP;
    goto unlock;
  }

  /* Forward. Trackers first. */
  /* The framing of the request this segment starts (framing_start). */
  if (boundary) framing_start(id, pk->seq, len);
  if (len && rm_after(pk->seq + len, c->c_nxt)) {
    /* A write that starts after a hole is not known to be whole. */
    int starts_write = (boundary || (c->cflags & RM_CF_LASTPSH)) && pk->seq == c->c_nxt;
    if (starts_write && pk->psh) c->cflags |= RM_CF_SMALLWRITE;
    else c->cflags &= ~RM_CF_SMALLWRITE;
    if (pk->psh) c->cflags |= RM_CF_LASTPSH;
    else c->cflags &= ~RM_CF_LASTPSH;
  }
  /* Only bytes (or a FIN) move it: a bare ACK's seq past c_nxt means the
   * client sent data this LB never saw (dropped before XDP), and its
   * retransmission must still count as new (a request's start). */
  if ((len || pk->fin) && rm_after(pk->seq + len + pk->fin, c->c_nxt))
    c->c_nxt = pk->seq + len + pk->fin;
  if (pk->ack_f && rm_after(pk->ack, c->c_acked) && !rm_after(pk->ack, c->s_nxt))
    c->c_acked = pk->ack;
  __u32 d_tsval = c->ts_c2b;
  if (pk->has_ts) {
    if (rm_after(pk->tsval, c->c_ts_last)) c->c_ts_last = pk->tsval;
    d_tsval = rm_tsval_offset(pk->tsval, c->ts_c2b, &c->lb_ts_last);
  }
  if (c->phase == RM_PH_RESP &&
      (boundary || (pk->ack_f && !rm_before(pk->ack, c->s_nxt)))) {
    /* The response is fully acknowledged, or a pipelining client starts
     * its next request: account it to the backend and request it belongs
     * to, before a new request (maybe elsewhere) starts. */
    c->phase = RM_PH_IDLE;
    resp_done = 1;
    done_bid = c->req_backend;
    done_start = c->req_start_ns;
    done_first = c->resp_first_ns;
  }
  if (boundary) {
    c->phase = RM_PH_REQ;
    c->req_no++;
    c->req_start_ns = now;
    c->req_backend = c->backend_id;
    started = 1;
  }
  req_no = c->req_no;
  if (pk->fin && !(c->fin_flags & RM_FIN_C)) {
    c->fin_flags |= RM_FIN_C;
    c->c_fin_seq = pk->seq + len;
    c->state = RM_C_NAT_CLOSE;
  }
  if (pk->rst) {
    /* Mid-exchange reset: pass it on, retire the pooled connection. */
    c->state = RM_C_CLOSED;
    retire = 1;
  }
  if (c->state == RM_C_NAT_CLOSE && (c->fin_flags & RM_FIN_B) && pk->ack_f &&
      !rm_before(pk->ack, c->b_fin_seq + c->d_resp + 1))
    c->fin_flags |= RM_FIN_B_ACKED;
  if ((c->fin_flags & (RM_FIN_B_ACKED | RM_FIN_C_ACKED)) ==
          (RM_FIN_B_ACKED | RM_FIN_C_ACKED) && c->state == RM_C_NAT_CLOSE) {
    c->state = RM_C_CLOSED;
    retire = 1;
  }
  if (retire) {
    st_b = RM_ST_CLOSED_RETIRE;
    leg_from_client(leg, c);
    abort_bid = request_abort(c);
  }

  __builtin_memcpy(x->dst_mac, c->b_mac, 6);
  x->vlan_tci = c->b_vlan_tci;
  x->saddr = c->pkey.lb_ip;
  x->daddr = c->pkey.backend_ip;
  x->sport = c->pkey.lb_port;
  x->dport = c->pkey.backend_port;
  x->d_seq = c->d_req;
  x->d_ack = c->d_resp;
  x->ack_floor_in = c->e_s_nxt;
  x->ack_floor_out = c->e_s_nxt - c->d_resp;
  x->d_tsval = d_tsval;
  x->d_tsecr = c->ts_b2c;
  x->tsecr_floor_in = c->e_s_ts;
  x->tsecr_floor_out = c->e_b_ts;
  x->ws_in = c->c_wscale;
  x->ws_out = c->lb_wscale;
  /* Next to no window once the response is whole (idle_win_cap). */
  x->win_cap = idle_win_cap(id, pk->payload_len | pk->fin | pk->rst);
  x->keep_ts = (c->b_flags & RM_LEG_TS) != 0;
  x->keep_sack = (c->b_flags & RM_LEG_SACK) != 0;
  {
    __u32 w = (__u32)bpf_ntohs(pk->tcp->window) << x->ws_in;
    w >>= x->ws_out;
    c->lb_win = w > 0xffff ? 0xffff : w;
  }
unlock:
  r->window = c->s_win;
  rm_unlock(&c->lock);
  if (st_a != RM_ST__MAX) stat_inc(st_a);
  if (first) stat_inc(RM_ST_HANDSHAKES);
  if (st_b != RM_ST__MAX) stat_inc(st_b);

  if (started) {
    backend_request_start(bid);
    emit_req_start(id, bid, pool, req_no);
  }
  if (sc->pend_ack) flush_pool_ack();
  if (resp_done && done_bid != RM_NO_ID) {
    __u64 last = 0;
    if (done_start && done_first) {
      __u64 t = now_ns();
      last = t > done_start ? t - done_start : 0;
    }
    backend_response_done(done_bid, last);
  }
  backend_abort(abort_bid);
  leg->owner = id;
  leg->epoch = epoch;
  if (release) {
    __u32 left = leg->retire ? RM_EV_POOL_ACK : RM_EV_CLIENT_LEFT;
    if (left == RM_EV_CLIENT_LEFT) stat_inc(RM_ST_POOL_RELEASED_WHOLE);
    pool_release_leg(pool, 0);
    /* A clean close has ack_f. */
    emit_pool_ack(leg, id, bid, pool, left);
  }
  if (free_it) {
    /* The final ACK of a close whose pooled connection is owed an ACK:
     * sent on to the backend as that ACK (one packet for one, where the
     * core would need a wakeup and a send of its own). */
    reply = !pk->vlan && close_ack_fill(id) ? 2 : 0;
    client_free(id, key, epoch);
    if (!reply) return XDP_DROP;
  }
  if (reply) {
    r->ws = 0xff;
    r->synack = 0;
    r->sack_perm = 0;
    r->mss = 0;
    if (reply == 1) {
      r->set_mac = 0;
      r->set_addr = 0;
      stat_inc(RM_ST_TX_FINACK);
    } else {
      stat_inc(RM_ST_POOL_ACK_ON_CLOSE); /* close_ack_fill set the rest */
    }
    return rm_send_reply(ctx, pk, r);
  }
  if (verdict != XDP_TX) return verdict;

  if (pk->vlan && !x->vlan_tci) {
    stat_inc(RM_ST_DROP_UNSUPPORTED);
    return XDP_DROP;
  }
  if (rm_xlate_packet(pk, x)) {
    stat_inc(RM_ST_DROP_MALFORMED);
    return XDP_DROP;
  }
  if (retire) {
    leg->retire = 1;
    pool_release_leg(pool, 0);
  }
  stat_inc(RM_ST_TX_C2B);
  (void)req_no;
  return XDP_TX;
}

static __always_inline int client_path(struct xdp_md *ctx, struct rm_pkt *pk,
                                       const struct rm_config *cfg) {
  struct rm_flow_key key = {.client_ip = pk->ip->saddr, .vip = pk->ip->daddr,
                            .client_port = pk->tcp->source,
                            .vip_port = pk->tcp->dest};
  __u32 *idp = bpf_map_lookup_elem(&client_ids, &key);
  if (!idp) {
    if (pk->syn && !pk->ack_f && !pk->rst) return client_syn_new(ctx, pk, cfg, &key);
    if (pk->rst || (pk->payload_len == 0 && !pk->fin && !pk->syn)) {
      stat_inc(RM_ST_DROP_BAD_STATE);
      return XDP_DROP;
    }
    return send_rst(ctx, pk);
  }
  __u32 id = *idp;
  if (pk->syn) {
    if (pk->ack_f || pk->rst) {
      stat_inc(RM_ST_DROP_BAD_STATE);
      return XDP_DROP;
    }
    return client_syn_again(ctx, pk, cfg, &key, id);
  }
  return client_established(ctx, pk, cfg, &key, id);
}

/* ---------------------------------------------------------- backend side */

/* A segment on an idle pooled connection: a retransmission the last client
 * never acked (answer with an ACK in place), the backend closing its idle
 * connection (answer FIN-ACK, retire it), or something we cannot accept. */
static __noinline int pool_idle_segment(struct xdp_md *ctx, struct rm_pkt *pk,
                                        const struct rm_config *cfg, __u32 pid) {
  struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
  if (!p) return XDP_DROP;
  struct rm_reply r = {};
  int reply = 0, dead = 0, queued;
  __u32 bid;
  rm_lock(&p->lock);
  bid = p->backend_id;
  queued = p->state == RM_P_IDLE; /* a parked one is not in the queue yet */
  if (!queued && p->state != RM_P_PARKED) {
    rm_unlock(&p->lock);
    stat_inc(RM_ST_DROP_STALE);
    return XDP_DROP;
  }
  __u32 end = pk->seq + pk->payload_len;
  r.ts = (p->flags & RM_LEG_TS) != 0;
  r.tsval = p->lb_ts_last;
  r.tsecr = pk->tsval;
  if (pk->rst) {
    p->state = RM_P_DEAD;
    dead = 1;
  } else if (pk->fin) {
    p->state = RM_P_DEAD;
    dead = 1;
    reply = 1;
    r.seq = p->lb_nxt;
    r.ack = end + 1;
    r.flags = RM_TH_FIN | RM_TH_ACK;
  } else if (pk->payload_len && rm_after(end, p->be_nxt)) {
    /* New data nobody will read: the connection is out of step. */
    p->state = RM_P_DEAD;
    dead = 2;
  } else if (pk->payload_len || rm_before(pk->seq, p->be_nxt)) {
    reply = 1;
    r.seq = p->lb_nxt;
    r.ack = p->be_nxt;
    r.flags = RM_TH_ACK;
  }
  rm_unlock(&p->lock);
  if (dead == 2) stat_inc(RM_ST_DROP_POOL_DATA);
  if (dead) {
    /* An idle one left the idle set while its entry is still queued (a
     * parked one was never counted). */
    struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
    if (bl && queued) __sync_fetch_and_sub(&bl->idle, 1);
    stat_inc(RM_ST_POOL_DEAD);
    emit(cfg, RM_EV_POOL_DEAD, RM_NO_ID, bid, pid, dead == 2);
  }
  if (!reply) {
    stat_inc(RM_ST_CONSUMED);
    return XDP_DROP;
  }
  r.window = RM_IDLE_WIN; /* idle: nobody reads */
  r.ws = 0xff;
  stat_inc(RM_ST_TX_POOL_ACK);
  return rm_send_reply(ctx, pk, &r);
}

/* The backend of a connection being verified owes bytes: the client it was
 * handed back by gets it back, if that client is still established, has
 * not moved since (its epoch is the one the release gave it) and the
 * connection is still being verified. Its record still holds the epoch's
 * offsets, so the owed bytes land where it expects them. 1 if it did. */
static __noinline int pool_reattach(__u32 pid, __u32 bid, __u32 owner, __u32 oepoch) {
  struct rm_client *c = bpf_map_lookup_elem(&clients, &owner);
  struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
  if (!c || !p) return 0;
  int ok = 0;
  __u32 cep;
  rm_lock(&c->lock);
  cep = c->epoch;
  if (c->state == RM_C_ESTABLISHED && c->pool_id == RM_NO_ID && cep == oepoch + 1) {
    c->pool_id = pid;
    c->backend_id = bid;
    ok = 1;
  }
  rm_unlock(&c->lock);
  if (!ok) return 0;
  ok = 0;
  rm_lock(&p->lock);
  if (p->state == RM_P_VERIFY && p->owner == owner && p->owner_epoch == oepoch) {
    p->state = RM_P_BUSY;
    p->flags &= ~RM_POOL_ANSWERED;
    p->owner_epoch = cep;
    ok = 1;
  }
  rm_unlock(&p->lock);
  if (ok) return 1;
  /* The connection went meanwhile: undo. */
  rm_lock(&c->lock);
  if (c->pool_id == pid && c->epoch == cep) {
    c->pool_id = RM_NO_ID;
    c->backend_id = RM_NO_ID;
  }
  rm_unlock(&c->lock);
  return 0;
}

/* A segment from the backend of a pooled connection being verified
 * (RM_P_VERIFY). The client it last carried closed or went idle instead of
 * starting a next request, so nothing showed that the backend had finished
 * sending: a response tail lost on the way, awaiting the backend's
 * retransmission, would reach the next client of a reused connection as
 * the start of its response (another client's bytes). The core probes it
 * (the last byte the backend received, sent again, which a TCP stack
 * answers at once with an ACK carrying its snd_nxt) RM_VERIFY_SETTLE_NS
 * after the release. Two answers from the backend with nothing sent past
 * be_nxt, the second RM_VERIFY_SETTLE_NS after the first (so to a later
 * probe), make it idle: the probe acks everything and opens the window, so
 * a backend that was only held back sends the rest after the first. Data or a
 * sequence past be_nxt give it back to its last client if it went idle
 * waiting for them (pool_reattach; the segment itself is dropped: it is
 * nearly always the answer to the probe, which carries nothing, and owed
 * data comes again with the backend's next retransmission), or else
 * retire it, as a FIN or an RST do. Earlier answers may be stale and are
 * only absorbed. */
static __noinline int pool_verify_segment(struct xdp_md *ctx, struct rm_pkt *pk,
                                          const struct rm_config *cfg, __u32 pid) {
  struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
  if (!p) return XDP_DROP;
  struct rm_reply r = {};
  int reply = 0, dead = 0, ok = 0, owes = 0;
  __u32 bid, entry, owner, oepoch;
  __u64 now = bpf_ktime_get_ns();
  rm_lock(&p->lock);
  bid = p->backend_id;
  r.window = rm_verify_win(p->lb_wscale); /* held open while verifying */
  owner = p->owner;
  oepoch = p->owner_epoch;
  entry = RM_IDLE_ENTRY(pid, p->gen & 0xfff);
  if (p->state != RM_P_VERIFY) {
    rm_unlock(&p->lock);
    stat_inc(RM_ST_DROP_STALE);
    return XDP_DROP;
  }
  __u32 end = pk->seq + pk->payload_len;
  r.ts = (p->flags & RM_LEG_TS) != 0;
  r.tsval = p->lb_ts_last;
  r.tsecr = pk->tsval;
  if (pk->rst || pk->fin || pk->syn) {
    p->state = RM_P_DEAD;
    dead = pk->rst ? 1 : 2;
  } else if (rm_after(end, p->be_nxt)) {
    owes = 1; /* decided below, outside this lock */
  } else if (pk->payload_len) {
    /* An old retransmission: the backend missed an ACK. */
    reply = 1;
    r.seq = p->lb_nxt;
    r.ack = p->be_nxt;
    r.flags = RM_TH_ACK;
  } else if (end == p->be_nxt && pk->ack_f && !rm_before(pk->ack, p->lb_nxt) &&
             now >= p->last_used_ns + RM_VERIFY_SETTLE_NS) {
    if (p->flags & RM_POOL_ANSWERED) {
      p->flags &= ~RM_POOL_ANSWERED;
      p->state = RM_P_IDLE;
      p->last_used_ns = bpf_ktime_get_coarse_ns();
      ok = 1;
    } else {
      /* The first answer. The probe it answers acked everything and opened
       * the window, so a backend that was held back (a client not reading,
       * an ACK lost while it waits on its retransmission timer) sends what
       * it still owes right behind this answer. Only an answer to a later
       * probe, after it has acted on this one, shows that it sent nothing
       * more; the settle time runs again from here. */
      p->flags |= RM_POOL_ANSWERED;
      p->last_used_ns = now;
    }
  }
  rm_unlock(&p->lock);
  if (owes) {
    if (owner != RM_NO_ID && pool_reattach(pid, bid, owner, oepoch)) {
      stat_inc(RM_ST_POOL_REATTACHED);
      return XDP_DROP;
    }
    rm_lock(&p->lock);
    if (p->state == RM_P_VERIFY) {
      p->state = RM_P_DEAD;
      dead = 2;
    }
    rm_unlock(&p->lock);
    if (!dead) {
      stat_inc(RM_ST_DROP_STALE);
      return XDP_DROP;
    }
  }
  if (dead) {
    stat_inc(RM_ST_POOL_UNVERIFIED);
    stat_inc(RM_ST_POOL_DEAD);
    emit(cfg, RM_EV_POOL_DEAD, RM_UNVERIFIED_ID, bid, pid, dead == 2);
    return XDP_DROP;
  }
  if (ok) {
    stat_inc(RM_ST_POOL_VERIFIED);
    pool_enqueue(cfg, pid, bid, entry, RM_NO_ID);
    return XDP_DROP;
  }
  if (!reply) {
    stat_inc(RM_ST_CONSUMED);
    return XDP_DROP;
  }
  r.ws = 0xff;
  stat_inc(RM_ST_TX_POOL_ACK);
  return rm_send_reply(ctx, pk, &r);
}

/* The backend closed (FIN) the pooled connection before the client
 * was sent anything of it for the request that opened this epoch: no
 * acknowledgement of the request (the close itself may carry the first,
 * which is dropped here), no response byte. It was closing an idle
 * connection as the request arrived. The client comes off it and its own
 * retransmission of the request starts a fresh splice: a transparent retry
 * (as an L7 proxy retries on an empty response), where forwarding the close
 * would fail the request. Returns XDP_DROP if it did so, -1 if the close
 * is an ordinary one. */
RM_GLOBAL int retry_on_close(__u32 pid, __u32 owner, __u32 oepoch) {
  struct rm_scratch *sc = scratch_get();
  struct rm_client *c = bpf_map_lookup_elem(&clients, &owner);
  if (!sc || !c) return -1;
  int retry = 0;
  __u32 req_bid = RM_NO_ID;
  rm_lock(&c->lock);
  if (c->epoch == oepoch && c->pool_id == pid && c->state == RM_C_ESTABLISHED &&
      c->phase == RM_PH_REQ && !c->fin_flags && c->s_nxt == c->e_s_nxt &&
      c->b_acked == c->e_c_nxt + c->d_req) {
    leg_from_client(&sc->leg, c);
    c->pool_id = RM_NO_ID;
    c->backend_id = RM_NO_ID;
    c->c_nxt = c->e_c_nxt;
    c->phase = RM_PH_IDLE;
    c->req_no--;
    c->epoch = oepoch + 1;
    req_bid = c->req_backend;
    retry = 1;
  }
  rm_unlock(&c->lock);
  if (!retry) return -1;
  backend_load_add(req_bid, -1, -1); /* it was in RM_PH_REQ */
  sc->leg.owner = owner;
  sc->leg.epoch = oepoch;
  sc->leg.retire = 2; /* the backend still holds it half open: reset it */
  pool_release_leg(pid, 0);
  stat_inc(RM_ST_RETRY_ON_CLOSE);
  return XDP_DROP;
}

static __noinline int backend_path(struct xdp_md *ctx, struct rm_pkt *pk,
                                        const struct rm_config *cfg) {
  struct rm_pool_key pkey = {.backend_ip = pk->ip->saddr, .lb_ip = pk->ip->daddr,
                             .backend_port = pk->tcp->source,
                             .lb_port = pk->tcp->dest};
  __u32 *pidp = bpf_map_lookup_elem(&pool_ids, &pkey);
  if (!pidp) {
    stat_inc(RM_ST_PASS_NOT_OURS);
    return XDP_PASS;
  }
  __u32 pid = *pidp;
  struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
  if (!p) return XDP_DROP;

  __u32 pstate, owner, oepoch;
  rm_lock(&p->lock);
  pstate = p->state;
  owner = p->owner;
  oepoch = p->owner_epoch;
  if (pstate == RM_P_CONNECTING && pk->syn && pk->ack_f) {
    /* The backend's SYN-ACK: what userspace cannot read from its socket. */
    p->be_isn = pk->seq;
    p->be_ts_last = pk->tsval;
    p->be_ts_at = rm_ts_stamp();
    p->be_edge = pk->ack + bpf_ntohs(pk->tcp->window); /* unscaled in SYNs */
    p->be_wscale = pk->has_ws ? pk->ws : 0;
    p->be_mss = pk->mss;
    p->flags = (pk->has_ts ? RM_LEG_TS : 0) | (pk->has_sackperm ? RM_LEG_SACK : 0) |
               (pk->has_ws ? RM_LEG_WS : 0);
    __builtin_memcpy(p->be_mac, pk->eth->h_source, 6);
    p->vlan_tci = pk->vlan ? pk->vlan->tci : 0;
    p->synack_seen = 1;
  }
  rm_unlock(&p->lock);

  if (pstate == RM_P_CONNECTING) {
    stat_inc(RM_ST_PASS_POOL_SETUP);
    return XDP_PASS;
  }
  if (pstate == RM_P_IDLE || pstate == RM_P_PARKED) return pool_idle_segment(ctx, pk, cfg, pid);
  if (pstate == RM_P_VERIFY) return pool_verify_segment(ctx, pk, cfg, pid);
  if (pstate != RM_P_BUSY) {
    stat_inc(RM_ST_DROP_STALE);
    return XDP_DROP;
  }
  if (pk->syn || pk->urg || pk->unsupported) {
    stat_inc(RM_ST_DROP_UNSUPPORTED);
    return XDP_DROP;
  }

  struct rm_client *c = bpf_map_lookup_elem(&clients, &owner);
  if (!c) return XDP_DROP;
  __u32 len = pk->payload_len;
  struct rm_scratch *sc = scratch_get();
  if (!sc) return XDP_DROP;
  struct rm_xlate *x = &sc->x;
  struct rm_leg *leg = &sc->leg;
  /* Every field of x is assigned below; leg only on the retire path. */
  int first_byte = 0, retire = 0;
  __u32 req_no = 0, bid = RM_NO_ID, req_bid = RM_NO_ID, abort_bid = RM_NO_ID;
  __u64 req_start = 0, now = 0;
  /* Only a response's first byte needs the time: read the phase unlocked
   * as a hint, and take the clock after unlocking if the hint was wrong. */
  if (len && *(volatile __u8 *)&c->phase == RM_PH_REQ) now = now_ns();
  /* The response's framing, read outside the lock on the same kind of
   * hint (resp_track uses the result only when the hint held). */
  if (len) {
    __u8 ph = *(volatile __u8 *)&c->phase;
    __u16 cf = *(volatile __u16 *)&c->cflags;
    __u32 want = (ph == RM_PH_REQ && (cf & RM_CF_FRAMED) ? 1 : 0) |
                 ((cf & RM_CF_REQHEAD) ? 2 : 0);
    if (want & 1) {
      resp_read(ctx, payload_off(ctx, pk), len, want);
    } else {
      sc->flen = 0;
      sc->fchunked = 0;
    }
  }

  if (pk->fin && !pk->rst && len == 0) {
    int r = retry_on_close(pid, owner, oepoch);
    if (r >= 0) return r;
  }
  rm_lock(&c->lock);
  if (c->epoch != oepoch || c->pool_id != pid ||
      (c->state != RM_C_ESTABLISHED && c->state != RM_C_NAT_CLOSE)) {
    rm_unlock(&c->lock);
    stat_inc(RM_ST_DROP_STALE);
    return XDP_DROP;
  }
  bid = c->backend_id;
  __u32 cap_field = cfg->client_window_cap >> c->s_wscale;
  if (cfg->client_window_cap && cap_field == 0) cap_field = 1;
  if (pk->ack_f && rm_after(pk->ack, c->b_acked) &&
      !rm_after(pk->ack, c->c_nxt + c->d_req))
    c->b_acked = pk->ack;
  /* A segment may map to a TSval older than one the client already got:
   * a pooled connection's retransmission of data from its previous
   * owner's epoch, sent before this epoch's TS offset was taken. The client
   * would drop it as PAWS (and count it); it gets the newest one instead,
   * so its duplicate ACK reaches the backend and ends the retransmission. */
  __u32 d_tsval = c->ts_b2c;
  if (pk->has_ts) {
    if (rm_after(pk->tsval, c->b_ts_last)) {
      /* When it arrived: a later splice estimates the backend's clock
       * from it (see do_splice). */
      c->b_ts_last = pk->tsval;
      c->b_ts_at = rm_ts_stamp();
    }
    d_tsval = rm_tsval_offset(pk->tsval, c->ts_b2c, &c->s_ts_last);
  }
  if (pk->ack_f) {
    __u32 wf = bpf_ntohs(pk->tcp->window);
    __u32 be = pk->ack + (wf << c->b_wscale);
    if (rm_after(be, c->b_edge)) c->b_edge = be;
    __u32 w = (wf << c->b_wscale) >> c->s_wscale;
    if (w > 0xffff) w = 0xffff;
    if (cap_field && w > cap_field) w = cap_field;
    c->s_win = w;
    __u32 a = rm_before(pk->ack, c->e_c_nxt + c->d_req) ? c->e_c_nxt : pk->ack - c->d_req;
    __u32 ce = a + (w << c->s_wscale);
    if (rm_after(ce, c->c_edge)) c->c_edge = ce;
  }
  __u32 seq_out_end = pk->seq + c->d_resp + len + pk->fin;
  /* Only bytes the client has not been sent yet are a response: a
   * duplicated or retransmitted old segment arriving during the next
   * request must not end that request. */
  int new_resp = len && rm_after(seq_out_end - pk->fin, c->s_nxt);
  if ((new_resp && c->phase == RM_PH_REQ) ||
      (len && chunks_open(c->cflags)))
    resp_track(ctx, owner, payload_off(ctx, pk), pk->seq + c->d_resp, len);
  /* Only bytes (or a FIN) move it. A bare ACK carries the backend's
   * snd_nxt, which is past s_nxt when response bytes were lost before XDP
   * (a full ring): counting them as sent made their retransmission "old",
   * so the response never began (phase stayed RM_PH_REQ) and the client's
   * FIN after it was taken for a close mid-exchange, retiring the pooled
   * connection. */
  if ((len || pk->fin) && rm_after(seq_out_end, c->s_nxt)) {
    c->s_nxt = seq_out_end;
    /* Whether the backend's write ended here (see RM_CF_RPUSHED). */
    if (pk->psh || pk->fin) c->cflags |= RM_CF_RPUSHED;
    else c->cflags &= ~RM_CF_RPUSHED;
  }
  if (new_resp && c->phase != RM_PH_RESP) {
    if (c->phase == RM_PH_REQ) {
      first_byte = 1;
      c->resp_first_ns = now ? now : c->req_start_ns + 1;
    } else {
      /* more response after the client had acked everything */
      first_byte = 2;
    }
    c->phase = RM_PH_RESP;
  }
  req_no = c->req_no;
  req_start = c->req_start_ns;
  req_bid = c->req_backend;
  if (pk->fin && !(c->fin_flags & RM_FIN_B)) {
    c->fin_flags |= RM_FIN_B;
    c->b_fin_seq = pk->seq + len;
    c->state = RM_C_NAT_CLOSE;
  }
  if ((c->fin_flags & RM_FIN_C) && pk->ack_f &&
      !rm_before(pk->ack, c->c_fin_seq + c->d_req + 1))
    c->fin_flags |= RM_FIN_C_ACKED;
  if (pk->rst) {
    c->state = RM_C_CLOSED;
    c->fin_flags |= RM_FIN_B_RST;
    retire = 1;
  } else if ((c->fin_flags & (RM_FIN_B_ACKED | RM_FIN_C_ACKED)) ==
                 (RM_FIN_B_ACKED | RM_FIN_C_ACKED) &&
             c->state == RM_C_NAT_CLOSE) {
    c->state = RM_C_CLOSED;
    retire = 1;
  }
  if (retire) {
    leg_from_client(leg, c);
    abort_bid = request_abort(c);
  }
  __builtin_memcpy(x->dst_mac, c->mac, 6);
  x->vlan_tci = c->vlan_tci;
  x->saddr = c->key.vip;
  x->daddr = c->key.client_ip;
  x->sport = c->key.vip_port;
  x->dport = c->key.client_port;
  x->d_seq = c->d_resp;
  x->d_ack = c->d_req;
  x->ack_floor_in = c->e_c_nxt + c->d_req;
  x->ack_floor_out = c->e_c_nxt;
  x->d_tsval = d_tsval;
  x->d_tsecr = c->ts_c2b;
  x->tsecr_floor_in = c->e_lb_ts;
  x->tsecr_floor_out = c->e_c_ts;
  x->ws_in = c->b_wscale;
  x->ws_out = c->s_wscale;
  x->win_cap = cap_field;
  x->keep_ts = (c->c_flags & RM_LEG_TS) != 0;
  x->keep_sack = (c->c_flags & RM_LEG_SACK) != 0;
  rm_unlock(&c->lock);

  if (first_byte == 1) {
    if (!now) now = now_ns();
    __u64 fb = now > req_start ? now - req_start : 0;
    emit_req_done(owner, bid, pid, req_no, fb);
    backend_first_byte(req_bid, fb, now);
  } else if (first_byte == 2) {
    backend_load_add(req_bid, 1, 0);
  }
  backend_abort(abort_bid);
  if (pk->vlan && !x->vlan_tci) {
    stat_inc(RM_ST_DROP_UNSUPPORTED);
    return XDP_DROP;
  }
  if (rm_xlate_packet(pk, x)) {
    stat_inc(RM_ST_DROP_MALFORMED);
    return XDP_DROP;
  }
  if (retire) {
    leg->owner = owner;
    leg->epoch = oepoch;
    leg->retire = 1;
    pool_release_leg(pid, 0);
  }
  stat_inc(RM_ST_TX_B2C);
  return XDP_TX;
}

/* ------------------------------------------------------------ entry point */

SEC("xdp")
int xdp_rematcher(struct xdp_md *ctx) {
  struct rm_pkt pk = {};
  stat_inc(RM_ST_RX);
  __u32 z = 0;
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  if (!cfg) return XDP_PASS;

  switch (rm_parse(ctx, &pk)) {
    case RM_PARSE_TCP:
      break;
    case RM_PARSE_NOT_IP:
      stat_inc(RM_ST_PASS_NOT_IP);
      return XDP_PASS;
    case RM_PARSE_NOT_TCP:
      stat_inc(RM_ST_PASS_NOT_TCP);
      return XDP_PASS;
    case RM_PARSE_FRAGMENT:
      stat_inc(RM_ST_PASS_FRAGMENT);
      return XDP_PASS;
    default:
      /* A malformed frame might be anyone's; only drop it if it claims to
       * be for the VIP, so a bug here cannot blackhole the host. */
      if (pk.ip && (void *)(pk.ip + 1) <= pk.data_end && pk.ip->daddr == cfg->vip) {
        stat_inc(RM_ST_DROP_MALFORMED);
        return XDP_DROP;
      }
      /* Headers fine, options not: if the tuple is a pooled connection's,
       * the LB's own socket must not see it (Linux parses around bad
       * option lengths and would act on the segment). */
      if (pk.ip && pk.tcp && (void *)(pk.ip + 1) <= pk.data_end &&
          (void *)(pk.tcp + 1) <= pk.data_end) {
        struct rm_pool_key mk = {.backend_ip = pk.ip->saddr, .lb_ip = pk.ip->daddr,
                                 .backend_port = pk.tcp->source,
                                 .lb_port = pk.tcp->dest};
        if (bpf_map_lookup_elem(&pool_ids, &mk)) {
          stat_inc(RM_ST_DROP_MALFORMED);
          return XDP_DROP;
        }
      }
      stat_inc(RM_ST_PASS_NOT_OURS);
      return XDP_PASS;
  }
  if (pk.ip->daddr == cfg->vip && pk.tcp->dest == cfg->vip_port)
    return client_path(ctx, &pk, cfg);
  return backend_path(ctx, &pk, cfg);
}


/* ---------------------------------------------------------- control */

/* Userspace runs this through BPF_PROG_TEST_RUN with a struct rm_ctl after
 * a 14-byte dummy Ethernet header, so multi-record changes happen here under
 * the records' locks, ordered like the datapath's own. */
SEC("xdp")
int xdp_ctl(struct xdp_md *ctx) {
  void *data = (void *)(long)ctx->data;
  void *end = (void *)(long)ctx->data_end;
  struct rm_ctl *cmd = data + sizeof(struct ethhdr);
  if ((void *)(cmd + 1) > end) return XDP_ABORTED;
  __u32 z = 0;
  if (cmd->op == RM_CTL_GET_CLIENT || cmd->op == RM_CTL_GET_POOL ||
      cmd->op == RM_CTL_PUT_POOL) {
    /* Whole records for userspace, copied under their lock. */
    void *rec = (void *)(cmd + 1);
    __u32 id = cmd->client_id;
    cmd->result = -2;
    if (cmd->op == RM_CTL_GET_CLIENT) {
      struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
      if (!c || rec + sizeof(*c) > end) return XDP_DROP;
      rm_lock(&c->lock);
      __builtin_memcpy(rec, c, sizeof(*c));
      rm_unlock(&c->lock);
    } else {
      struct rm_pool *p = bpf_map_lookup_elem(&pools, &id);
      if (!p || rec + sizeof(*p) > end) return XDP_DROP;
      rm_lock(&p->lock);
      if (cmd->op == RM_CTL_GET_POOL)
        __builtin_memcpy(rec, p, sizeof(*p));
      else
        __builtin_memcpy((void *)p + sizeof(p->lock), rec + sizeof(p->lock),
                         sizeof(*p) - sizeof(p->lock));
      rm_unlock(&p->lock);
    }
    cmd->result = 0;
    return XDP_DROP;
  }
  if (cmd->op == RM_CTL_RETIRE_IDLE_POOL) {
    /* Idle too long (the backend would close it soon): out of service
     * under the record's lock, so no client takes it meanwhile. Its queue
     * entry goes stale; userspace resets and replaces it. */
    __u32 pid = cmd->client_id;
    struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
    int r = 0;
    __u32 bid = 0;
    if (p) {
      rm_lock(&p->lock);
      if (p->state == RM_P_IDLE && p->last_used_ns < cmd->older_than_ns) {
        p->state = RM_P_DEAD;
        bid = p->backend_id;
        r = 1;
      }
      rm_unlock(&p->lock);
    }
    if (r) {
      struct rm_backend_load *bl = bpf_map_lookup_elem(&backend_load, &bid);
      if (bl) __sync_fetch_and_sub(&bl->idle, 1);
    }
    cmd->result = r;
    return XDP_DROP;
  }
  struct rm_config *cfg = bpf_map_lookup_elem(&config, &z);
  if (cmd->op == RM_CTL_UNPARK_POOL) {
    /* Its window shrunk by the core: idle, and queued. */
    __u32 pid = cmd->client_id;
    struct rm_pool *p = bpf_map_lookup_elem(&pools, &pid);
    int r = 0;
    __u32 bid = 0, entry = 0;
    if (p && cfg) {
      rm_lock(&p->lock);
      if (p->state == RM_P_PARKED &&
          (p->lb_nxt != cmd->backend_id || p->be_nxt != (__u32)(cmd->older_than_ns >> 32) ||
           p->lb_ts_last != (__u32)cmd->older_than_ns || p->be_ts_last != (__u32)cmd->now_ns)) {
        r = -3; /* the shrink was sent from another record: again */
      } else if (p->state == RM_P_PARKED) {
        p->state = RM_P_IDLE;
        p->last_used_ns = bpf_ktime_get_coarse_ns();
        bid = p->backend_id;
        entry = RM_IDLE_ENTRY(pid, p->gen & 0xfff);
        r = 1;
      }
      rm_unlock(&p->lock);
      if (r == 1) pool_enqueue(cfg, pid, bid, entry, RM_NO_ID);
    }
    cmd->result = r;
    return XDP_DROP;
  }
  __u32 id = cmd->client_id;
  struct rm_client *c = bpf_map_lookup_elem(&clients, &id);
  if (!cfg || !c) {
    cmd->result = -2;
    return XDP_DROP;
  }
  struct rm_scratch *sc = scratch_get();
  if (!sc) return XDP_DROP;
  struct rm_leg *leg = &sc->leg;
  struct rm_flow_key key;
  __u32 pool = RM_NO_ID, epoch = 0, op = cmd->op, abort_bid = RM_NO_ID;
  __u64 older = cmd->older_than_ns;
  int act = 0, clean = 0;

  rm_lock(&c->lock);
  /* A client whose framed response is not whole, or whose window is
   * closed, is not idle, however quiet: it is not reading, or the backend
   * is waiting out a lost ACK. */
  int quiescent = c->pool_id == RM_NO_ID ||
                  (c->phase != RM_PH_REQ && c->c_acked == c->s_nxt &&
                   c->b_acked == c->c_nxt + c->d_req && !c->fin_flags && !backend_may_owe(id));
  /* The caller picks `older` per state: a short linger for CLOSED and
   * LAST_ACK, the idle timeout for the rest. */
  if (op == RM_CTL_FREE_CLIENT && c->state != RM_C_FREE && c->last_seen_ns < older) {
    act = 1;
  } else if (op == RM_CTL_RELEASE_IDLE && c->state == RM_C_ESTABLISHED &&
             c->pool_id != RM_NO_ID && quiescent && c->last_seen_ns < older) {
    act = 2;
  }
  if (act) {
    key = c->key;
    pool = c->pool_id;
    epoch = c->epoch;
    clean = quiescent && c->state == RM_C_ESTABLISHED;
    leg_from_client(leg, c);
    leg->owner = id;
    leg->epoch = epoch;
    /* Clean: idle at once after a whole framed response, else verified
     * before reuse. */
    leg->retire = !clean ? 2 : resp_whole(c) ? 0 : 3;
    c->pool_id = RM_NO_ID;
    c->backend_id = RM_NO_ID;
    abort_bid = request_abort(c);
    c->epoch = epoch + 1;
    if (act == 1) {
      c->state = RM_C_FREE;
    }
  }
  rm_unlock(&c->lock);

  backend_abort(abort_bid);
  if (act && pool != RM_NO_ID) {
    if (!leg->retire) {
      stat_inc(RM_ST_POOL_RELEASED_WHOLE);
      emit(cfg, RM_EV_CLIENT_LEFT, id, RM_NO_ID, RM_NO_ID, 0);
    }
    pool_release_leg(pool, 0);
  }
  if (act == 1) {
    bpf_map_delete_elem(&client_ids, &key);
    bpf_map_push_elem(&free_client_ids, &id, 0);
  }
  cmd->result = act;
  return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
