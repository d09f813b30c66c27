/* SPDX-License-Identifier: GPL-2.0 */
/*
 * splice.h: rewriting one TCP segment from one leg of a splice onto the other
 * (addresses, seq/ack, timestamps, SACK blocks, window), and writing the few
 * segments the LB originates itself (SYN-ACK, RST, FIN-ACK, ACK) in place.
 *
 * A struct rm_xlate holds everything one direction of one epoch needs; the
 * caller fills it from the client record under its lock and rewrites the
 * packet after unlocking, so no lock is held across the rewrite.
 */
#ifndef REMATCHER_BPF_SPLICE_H_
#define REMATCHER_BPF_SPLICE_H_

#include "parse.h"
#include "csum.h"

struct rm_xlate {
  __u8 dst_mac[6];
  __u16 vlan_tci;      /* network order, applied when the packet has a tag */
  __be32 saddr, daddr;
  __be16 sport, dport;
  __u32 d_seq;         /* seq_out = seq + d_seq */
  __u32 d_ack;         /* ack_out = ack - d_ack (also SACK edges) */
  __u32 ack_floor_in;  /* acks before this belong to an earlier epoch... */
  __u32 ack_floor_out; /* ...and are clamped to this */
  __u32 d_tsval;       /* tsval_out = tsval + d_tsval */
  __u32 d_tsecr;       /* tsecr_out = tsecr - d_tsecr */
  __u32 tsecr_floor_in;
  __u32 tsecr_floor_out;
  __u8 ws_in, ws_out;  /* window shifts: sender's and receiver's view */
  __u16 _pad;
  __u32 win_cap;       /* most the window field may say (0: no cap) */
  __u8 keep_ts, keep_sack; /* destination leg negotiated them */
};

/* The TSval offset for one segment: the epoch's `off`, or more, so the
 * receiver, which last got *last, never sees a TSval go backwards (PAWS
 * would drop the segment). Advances *last. */
static __always_inline __u32 rm_tsval_offset(__u32 tsval, __u32 off, __u32 *last) {
  __u32 out = tsval + off;
  if (rm_after(out, *last)) {
    *last = out;
    return off;
  }
  return *last - tsval;
}

/* Translate every SACK block edge; drop blocks that start before the epoch
 * (they describe data of another pooled connection) and compact the rest;
 * NOP out whatever is left over. D-SACK blocks are translated alike. */
static __always_inline int rm_xlate_sack(struct rm_pkt *pk, const struct rm_xlate *x) {
  if (!pk->sack_off) return 0;
  __u8 *base = (__u8 *)pk->tcp + (pk->sack_off & 63);
  __u32 nblocks = ((__u32)pk->sack_len - 2) >> 3;
  __u32 kept = 0;
  if ((void *)(base + 2) > pk->data_end) return -1;
  if (x->keep_sack) {
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < 4; i++) {
      if (i >= nblocks) break;
      __u8 *b = base + 2 + 8 * i;
      if ((void *)(b + 8) > pk->data_end) return -1;
      __u32 l = bpf_ntohl(*(__be32 *)b);
      __u32 r = bpf_ntohl(*(__be32 *)(b + 4));
      if (rm_before(l, x->ack_floor_in)) continue;
      __u8 *d = base + 2 + 8 * (kept & 3);
      if ((void *)(d + 8) > pk->data_end) return -1;
      *(__be32 *)d = bpf_htonl(l - x->d_ack);
      *(__be32 *)(d + 4) = bpf_htonl(r - x->d_ack);
      kept++;
    }
  }
  if (kept == 0) {
    /* Whole option goes. */
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < 34; i++) {
      if (i >= pk->sack_len) break;
      if ((void *)(base + i + 1) > pk->data_end) return -1;
      base[i] = RM_TCPOPT_NOP;
    }
    return 0;
  }
  __u32 newlen = 2 + 8 * kept;
  base[1] = newlen;
#pragma clang loop unroll(disable)
  for (__u32 i = 10; i < 34; i++) {
    if (i < newlen) continue;
    if (i >= pk->sack_len) break;
    if ((void *)(base + i + 1) > pk->data_end) return -1;
    base[i] = RM_TCPOPT_NOP;
  }
  return 0;
}

/* Two 16-bit fields as the 32-bit word they make in memory, and back. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define RM_PAIR16(first, second) ((__u32)(__u16)(first) | ((__u32)(__u16)(second) << 16))
#define RM_FIRST16(w) ((__u16)(w))
#define RM_SECOND16(w) ((__u16)((w) >> 16))
#else
#define RM_PAIR16(first, second) (((__u32)(__u16)(first) << 16) | (__u32)(__u16)(second))
#define RM_FIRST16(w) ((__u16)((w) >> 16))
#define RM_SECOND16(w) ((__u16)(w))
#endif

/* Rewrites every field but the SACK blocks: the first 16 bytes of the TCP
 * header (ports, seq, ack, flags, window) and the TS option (its 10 bytes at
 * `t`, if `ts`). Each changed 32-bit word is computed in a register from the
 * old one (o[0..3], loaded before any store) and stored whole, so nothing
 * is read back after a narrower store (a store-forwarding stall that cost
 * more than the rest of the rewrite). Returns the sum of the new words. */
static __always_inline __u64 rm_xlate_words(struct rm_pkt *pk, const struct rm_xlate *x,
                                            __u32 *w, const __u32 *o, __u8 *t, int ts) {
  __u32 n0 = RM_PAIR16(x->sport, x->dport);
  __u32 n1 = bpf_htonl(pk->seq + x->d_seq);
  __u32 n2 = o[2];
  if (pk->ack_f) {
    __u32 a = rm_before(pk->ack, x->ack_floor_in) ? x->ack_floor_out : pk->ack - x->d_ack;
    n2 = bpf_htonl(a);
  }
  /* ECN is negotiated on neither leg (see DESIGN.md); never pass its
   * signals across: ECE and CWR are the top bits of the flag byte. */
  __u16 offflags = RM_FIRST16(o[3]) & bpf_htons(0xff3f);
  __u16 win = RM_SECOND16(o[3]);
  if (!pk->syn) {
    __u32 v = (__u32)bpf_ntohs(win) << x->ws_in;
    v >>= x->ws_out;
    if (v > 0xffff) v = 0xffff;
    if (x->win_cap && v > x->win_cap) v = x->win_cap;
    win = bpf_htons(v);
  }
  __u32 n3 = RM_PAIR16(offflags, win);
  w[0] = n0;
  w[1] = n1;
  w[2] = n2;
  w[3] = n3;
  __u64 sum = (__u64)n0 + n1 + n2 + n3;
  if (!ts) return sum;
  __u16 kl;
  __u32 val, ecr;
  if (x->keep_ts) {
    kl = *(__u16 *)t;
    val = pk->tsval + x->d_tsval;
    ecr = pk->tsecr;
    if (ecr) ecr = !rm_after(ecr, x->tsecr_floor_in) ? x->tsecr_floor_out : ecr - x->d_tsecr;
    val = bpf_htonl(val);
    ecr = bpf_htonl(ecr);
  } else {
    /* The other leg has no timestamps: NOP the option out. */
    kl = 0x0101;
    val = ecr = 0x01010101;
    *(__u16 *)t = kl;
  }
  *(__u32 *)(t + 2) = val;
  *(__u32 *)(t + 6) = ecr;
  return sum + kl + val + ecr;
}

/* Rewrite a spliced segment for the other leg. Returns 0 or -1 (malformed;
 * the caller drops).
 * Checksums are updated incrementally (RFC 1624). Without a SACK option,
 * the rewritten bytes are the first 16 of the TCP header and the 10 of the
 * TS option, and only those words enter the update (the common case).
 * With SACK blocks, which move, or a TS option at an odd offset (its words
 * would straddle the checksum's 16-bit grid), the whole header is summed
 * before and after. */
static __noinline int rm_xlate_packet(struct rm_pkt *pk, const struct rm_xlate *x) {
  struct iphdr *ip = pk->ip;
  struct tcphdr *tcp = pk->tcp;
  void *end = pk->data_end;
  int ok = 1;

  /* L2: the frame came addressed to us; send it from us to the peer. */
  __builtin_memcpy(pk->eth->h_source, pk->eth->h_dest, ETH_ALEN);
  __builtin_memcpy(pk->eth->h_dest, x->dst_mac, ETH_ALEN);
  if (pk->vlan) pk->vlan->tci = x->vlan_tci;

  /* L3: only the addresses change. */
  __u64 old_addr = (__u64)ip->saddr + ip->daddr;
  __u64 new_addr = (__u64)x->saddr + x->daddr;
  ip->saddr = x->saddr;
  ip->daddr = x->daddr;
  ip->check = rm_csum_replace((__u64)ip->check + old_addr, new_addr);

  /* L4 */
  __u32 *w = (__u32 *)tcp;
  if ((void *)(w + 4) > end) return -1;
  __u8 *t = (__u8 *)tcp + (pk->ts_off & 63);
  int ts = pk->ts_off != 0;
  if (ts && (void *)(t + 10) > end) return -1;
  __u32 o[4] = {w[0], w[1], w[2], w[3]};
  if (!pk->sack_off && !(pk->ts_off & 1)) {
    __u64 old_sum = old_addr + (__u64)tcp->check + o[0] + o[1] + o[2] + o[3];
    if (ts) old_sum += (__u64)*(__u16 *)t + *(__u32 *)(t + 2) + *(__u32 *)(t + 6);
    __u64 new_sum = new_addr + rm_xlate_words(pk, x, w, o, t, ts);
    tcp->check = rm_csum_replace(old_sum, new_sum);
    return 0;
  }
  __u64 old_sum = rm_sum_words(tcp, pk->tcp_hlen / 4, end, &ok) + old_addr;
  if (!ok) return -1;
  rm_xlate_words(pk, x, w, o, t, ts);
  if (rm_xlate_sack(pk, x)) return -1;
  tcp->check = 0;
  __u64 new_sum = rm_sum_words(tcp, pk->tcp_hlen / 4, end, &ok) + new_addr;
  if (!ok) return -1;
  tcp->check = rm_csum_replace(old_sum, new_sum);
  return 0;
}

/* ---------------------------------------------------- packets we originate */

struct rm_reply {
  __u32 seq, ack;
  __u16 window;      /* already scaled for the receiver */
  __u8 flags;        /* TCP flag byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16) */
  __u8 ts;           /* include a timestamp option */
  __u32 tsval, tsecr;
  /* SYN-ACK only */
  __u8 synack;
  __u8 sack_perm;
  __u8 ws;           /* 0xff: no window scale option */
  __u8 _pad;
  __u16 mss;
  __u8 dst_mac[6];   /* if set_mac: send here instead of back to the source */
  __u8 set_mac;
  __u8 _pad2;
  __be32 saddr, daddr; /* if set_addr: explicit addresses (else swapped) */
  __be16 sport, dport;
  __u8 set_addr;
};

#define RM_TH_FIN 0x01
#define RM_TH_SYN 0x02
#define RM_TH_RST 0x04
#define RM_TH_PSH 0x08
#define RM_TH_ACK 0x10

/* Turn the packet in hand into a segment of our own, with no payload. The
 * packet's headers up to the TCP header are reused; the frame is resized.
 * All packet pointers are invalid afterwards. Returns XDP_TX or XDP_DROP. */
static __noinline int rm_send_reply(struct xdp_md *ctx, struct rm_pkt *pk,
                                         const struct rm_reply *r) {
  void *data;
  __u32 l3_off = pk->l3_off;
  __u32 ihl = pk->ip->ihl * 4;
  if (l3_off > 22 || ihl > 60) return XDP_DROP;
  __u32 opt_len = 0;
  if (r->synack) {
    opt_len = 4;                                  /* MSS */
    if (r->ts || r->sack_perm) opt_len += r->ts ? 12 : 4;
    if (r->ws != 0xff) opt_len += 4;
  } else if (r->ts) {
    opt_len = 12;
  }
  __u32 new_len = l3_off + ihl + sizeof(struct tcphdr) + opt_len;
  int delta = (int)new_len - (int)((long)ctx->data_end - (long)ctx->data);
  if (delta && bpf_xdp_adjust_tail(ctx, delta)) return XDP_DROP;

  data = (void *)(long)ctx->data;
  void *end = (void *)(long)ctx->data_end;
  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > end) return XDP_DROP;
  struct iphdr *ip = data + l3_off;
  if ((void *)(ip + 1) > end) return XDP_DROP;
  struct tcphdr *tcp = (void *)ip + (ihl & 0x3c);
  if ((void *)(tcp + 1) > end) return XDP_DROP;

  __u8 mac[ETH_ALEN];
  __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
  __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
  __builtin_memcpy(eth->h_dest, r->set_mac ? r->dst_mac : mac, ETH_ALEN);

  __be32 a = ip->saddr;
  __be16 p = tcp->source;
  if (r->set_addr) {
    ip->saddr = r->saddr;
    ip->daddr = r->daddr;
    tcp->source = r->sport;
    tcp->dest = r->dport;
  } else {
    ip->saddr = ip->daddr;
    ip->daddr = a;
    tcp->source = tcp->dest;
    tcp->dest = p;
  }
  ip->tot_len = bpf_htons(ihl + sizeof(struct tcphdr) + opt_len);
  ip->ttl = 64;
  ip->check = 0;
  int ok = 1;
  __u64 isum = rm_sum_words(ip, ip->ihl, end, &ok);
  if (!ok) return XDP_DROP;
  ip->check = (__u16)~rm_fold(isum);

  tcp->seq = bpf_htonl(r->seq);
  tcp->ack_seq = bpf_htonl(r->ack);
  ((__u8 *)tcp)[12] = (__u8)(((sizeof(struct tcphdr) + opt_len) / 4) << 4);
  ((__u8 *)tcp)[13] = r->flags;
  tcp->window = bpf_htons(r->window);
  tcp->urg_ptr = 0;

  __u8 *o = (__u8 *)(tcp + 1);
  if (opt_len) {
    if ((void *)(o + 24) > end && (void *)(o + opt_len) > end) return XDP_DROP;
  }
  if (r->synack) {
    if ((void *)(o + 4) > end) return XDP_DROP;
    o[0] = RM_TCPOPT_MSS; o[1] = 4; o[2] = r->mss >> 8; o[3] = r->mss & 0xff;
    o += 4;
    if (r->ts) {
      if ((void *)(o + 12) > end) return XDP_DROP;
      if (r->sack_perm) { o[0] = RM_TCPOPT_SACK_PERM; o[1] = 2; }
      else { o[0] = RM_TCPOPT_NOP; o[1] = RM_TCPOPT_NOP; }
      o[2] = RM_TCPOPT_TS; o[3] = 10;
      *(__be32 *)(o + 4) = bpf_htonl(r->tsval);
      *(__be32 *)(o + 8) = bpf_htonl(r->tsecr);
      o += 12;
    } else if (r->sack_perm) {
      if ((void *)(o + 4) > end) return XDP_DROP;
      o[0] = RM_TCPOPT_NOP; o[1] = RM_TCPOPT_NOP; o[2] = RM_TCPOPT_SACK_PERM; o[3] = 2;
      o += 4;
    }
    if (r->ws != 0xff) {
      if ((void *)(o + 4) > end) return XDP_DROP;
      o[0] = RM_TCPOPT_NOP; o[1] = RM_TCPOPT_WS; o[2] = 3; o[3] = r->ws;
    }
  } else if (r->ts) {
    if ((void *)(o + 12) > end) return XDP_DROP;
    o[0] = RM_TCPOPT_NOP; o[1] = RM_TCPOPT_NOP; o[2] = RM_TCPOPT_TS; o[3] = 10;
    *(__be32 *)(o + 4) = bpf_htonl(r->tsval);
    *(__be32 *)(o + 8) = bpf_htonl(r->tsecr);
  }

  tcp->check = 0;
  __u32 tlen = sizeof(struct tcphdr) + opt_len;
  __u64 s = rm_sum_words(tcp, tlen / 4, end, &ok);
  if (!ok) return XDP_DROP;
  s += ip->saddr;
  s += ip->daddr;
  s += bpf_htons(IPPROTO_TCP);
  s += bpf_htons(tlen);
  tcp->check = (__u16)~rm_fold(s);
  return XDP_TX;
}

#endif /* REMATCHER_BPF_SPLICE_H_ */
