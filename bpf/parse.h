/* SPDX-License-Identifier: GPL-2.0 */
/*
 * parse.h: header parsing. Ethernet with up to two VLAN tags, IPv4 (options
 * allowed, fragments refused), TCP with its options. Every access is bounds
 * checked; anything that does not parse cleanly is reported as malformed and
 * never touches a record.
 */
#ifndef REMATCHER_BPF_PARSE_H_
#define REMATCHER_BPF_PARSE_H_

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define RM_TCPOPT_EOL 0
#define RM_TCPOPT_NOP 1
#define RM_TCPOPT_MSS 2
#define RM_TCPOPT_WS 3
#define RM_TCPOPT_SACK_PERM 4
#define RM_TCPOPT_SACK 5
#define RM_TCPOPT_TS 8
#define RM_TCPOPT_MD5 19
#define RM_TCPOPT_AO 29

struct rm_vlan_hdr {
  __be16 tci;
  __be16 proto;
};

enum rm_parse_result {
  RM_PARSE_TCP = 0,
  RM_PARSE_NOT_IP,
  RM_PARSE_NOT_TCP,
  RM_PARSE_FRAGMENT,
  RM_PARSE_MALFORMED,
};

/* What the datapath needs of a TCP/IPv4 packet. Option offsets are from the
 * start of the TCP header; 0 means absent. */
struct rm_pkt {
  void *data_end;
  struct ethhdr *eth;
  struct rm_vlan_hdr *vlan; /* innermost tag, or NULL */
  struct iphdr *ip;
  struct tcphdr *tcp;
  __u32 l3_off;      /* bytes from frame start to the IP header: 14/18/22 */
  __u32 tcp_hlen;    /* bytes, 20..60 */
  __u32 payload_len; /* TCP payload bytes per the IP total length */
  __u32 seq, ack;    /* host order */
  __u32 tsval, tsecr;
  __u16 mss;
  __u8 ws;
  __u8 ts_off;       /* offset of the TS option's kind byte */
  __u8 sack_off;     /* offset of the SACK option's kind byte */
  __u8 sack_len;     /* SACK option length */
  __u8 has_ws, has_sackperm, has_mss, has_ts;
  __u8 unsupported;  /* MD5 / AO present */
  __u8 syn, ack_f, fin, rst, psh, urg;
};

/* Parse TCP options. A length byte of 0 or 1, or one that runs past the
 * header, makes the packet malformed (Linux's tcp_parse_options stops
 * silently; a splicer must not forward what it cannot translate).
 * The option bytes are copied to the stack and walked by a bpf_loop
 * callback, which the verifier checks once instead of per iteration. */
struct rm_optwalk {
  __u8 buf[64];  /* option bytes, zero padded */
  __u32 off;     /* cursor into buf */
  __u32 len;     /* option bytes present (0..40) */
  __s32 err;
  __u32 tsval, tsecr;
  __u16 mss;
  __u8 ws, ts_off, sack_off, sack_len;
  __u8 has_ws, has_sackperm, has_mss, has_ts, unsupported;
};

static long rm_opt_step(__u32 i, void *arg) {
  struct rm_optwalk *w = arg;
  __u32 off = w->off;
  if (off >= w->len || off >= 40) return 1;
  __u8 kind = w->buf[off & 63];
  if (kind == RM_TCPOPT_EOL) return 1;
  if (kind == RM_TCPOPT_NOP) {
    w->off = off + 1;
    return 0;
  }
  __u32 len = w->buf[(off + 1) & 63];
  if (len < 2 || off + len > w->len) {
    w->err = -1;
    return 1;
  }
  __u32 b = (off + 2) & 63;
  switch (kind) {
    case RM_TCPOPT_MSS:
      if (len != 4) goto bad;
      w->has_mss = 1;
      w->mss = ((__u16)w->buf[b] << 8) | w->buf[(b + 1) & 63];
      break;
    case RM_TCPOPT_WS:
      if (len != 3) goto bad;
      w->has_ws = 1;
      w->ws = w->buf[b] > 14 ? 14 : w->buf[b];
      break;
    case RM_TCPOPT_SACK_PERM:
      if (len != 2) goto bad;
      w->has_sackperm = 1;
      break;
    case RM_TCPOPT_SACK:
      if (len < 10 || len > 34 || ((len - 2) & 7)) goto bad;
      w->sack_off = off + sizeof(struct tcphdr);
      w->sack_len = len;
      break;
    case RM_TCPOPT_TS:
      if (len != 10) goto bad;
      w->has_ts = 1;
      w->ts_off = off + sizeof(struct tcphdr);
      w->tsval = ((__u32)w->buf[b] << 24) | ((__u32)w->buf[(b + 1) & 63] << 16) |
                 ((__u32)w->buf[(b + 2) & 63] << 8) | w->buf[(b + 3) & 63];
      w->tsecr = ((__u32)w->buf[(b + 4) & 63] << 24) | ((__u32)w->buf[(b + 5) & 63] << 16) |
                 ((__u32)w->buf[(b + 6) & 63] << 8) | w->buf[(b + 7) & 63];
      break;
    case RM_TCPOPT_MD5:
    case RM_TCPOPT_AO:
      w->unsupported = 1;
      break;
    default:
      break;
  }
  w->off = off + len;
  return 0;
bad:
  w->err = -1;
  return 1;
}

/* The general case: any options, walked one by one. */
static __noinline int rm_parse_options_walk(struct xdp_md *ctx, struct rm_pkt *pk) {
  __u32 optlen = pk->tcp_hlen - sizeof(struct tcphdr);
  struct rm_optwalk w;
  __builtin_memset(&w, 0, sizeof(w));
  __u32 tcp_off = (void *)pk->tcp - (void *)(long)ctx->data;
  if (optlen == 0 || optlen > 40 || tcp_off > 200) return optlen ? -1 : 0;
  if (bpf_xdp_load_bytes(ctx, tcp_off + sizeof(struct tcphdr), w.buf, optlen))
    return -1;
  w.len = optlen;
  bpf_loop(40, rm_opt_step, &w, 0);
  if (w.err) return -1;
  pk->tsval = w.tsval;
  pk->tsecr = w.tsecr;
  pk->mss = w.mss;
  pk->ws = w.ws;
  pk->ts_off = w.ts_off;
  pk->sack_off = w.sack_off;
  pk->sack_len = w.sack_len;
  pk->has_ws = w.has_ws;
  pk->has_sackperm = w.has_sackperm;
  pk->has_mss = w.has_mss;
  pk->has_ts = w.has_ts;
  pk->unsupported = w.unsupported;
  return 0;
}

static __always_inline int rm_parse_options(struct xdp_md *ctx, struct rm_pkt *pk) {
  __u32 optlen = pk->tcp_hlen - sizeof(struct tcphdr);
  if (optlen == 0) return 0;
  /* Fast path, inline: what Linux puts on nearly every established-flow
   * segment, NOP NOP TS and nothing else. */
  __u8 *o = (__u8 *)(pk->tcp + 1);
  if (optlen == 12 && (void *)(o + 12) <= pk->data_end &&
      *(__u32 *)o == bpf_htonl(0x0101080a)) {
    pk->has_ts = 1;
    pk->ts_off = sizeof(struct tcphdr) + 2;
    pk->tsval = bpf_ntohl(*(__be32 *)(o + 4));
    pk->tsecr = bpf_ntohl(*(__be32 *)(o + 8));
    return 0;
  }
  return rm_parse_options_walk(ctx, pk);
}

static __always_inline int rm_parse(struct xdp_md *ctx, struct rm_pkt *pk) {
  void *data = (void *)(long)ctx->data;
  void *data_end = (void *)(long)ctx->data_end;
  pk->data_end = data_end;

  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > data_end) return RM_PARSE_MALFORMED;
  pk->eth = eth;
  __u16 proto = eth->h_proto;
  void *cur = eth + 1;
  __u32 l3_off = sizeof(*eth);

#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
      break;
    struct rm_vlan_hdr *vh = cur;
    if ((void *)(vh + 1) > data_end) return RM_PARSE_MALFORMED;
    pk->vlan = vh;
    proto = vh->proto;
    cur = vh + 1;
    l3_off += sizeof(*vh);
  }
  if (proto != bpf_htons(ETH_P_IP)) return RM_PARSE_NOT_IP;

  struct iphdr *ip = cur;
  if ((void *)(ip + 1) > data_end) return RM_PARSE_MALFORMED;
  /* Set before the header checks: a bad IHL or version addressed to the
   * VIP must be dropped like any other malformed frame for the VIP, and the
   * caller needs the (bounds-checked) fixed header to see the address. */
  pk->ip = ip;
  if (ip->version != 4 || ip->ihl < 5) return RM_PARSE_MALFORMED;
  __u32 ihl = ip->ihl * 4;
  if ((void *)ip + ihl > data_end) return RM_PARSE_MALFORMED;
  pk->l3_off = l3_off;
  if (ip->protocol != IPPROTO_TCP) return RM_PARSE_NOT_TCP;
  if (ip->frag_off & bpf_htons(0x3fff)) return RM_PARSE_FRAGMENT;

  struct tcphdr *tcp = (void *)ip + ihl;
  if ((void *)(tcp + 1) > data_end) return RM_PARSE_MALFORMED;
  __u32 thl = tcp->doff * 4;
  if (thl < sizeof(*tcp) || (void *)tcp + thl > data_end)
    return RM_PARSE_MALFORMED;
  __u32 tot = bpf_ntohs(ip->tot_len);
  if (tot < ihl + thl || (void *)ip + tot > data_end) return RM_PARSE_MALFORMED;
  pk->tcp = tcp;
  pk->tcp_hlen = thl;
  pk->payload_len = tot - ihl - thl;
  pk->seq = bpf_ntohl(tcp->seq);
  pk->ack = bpf_ntohl(tcp->ack_seq);
  pk->syn = tcp->syn;
  pk->ack_f = tcp->ack;
  pk->fin = tcp->fin;
  pk->rst = tcp->rst;
  pk->psh = tcp->psh;
  pk->urg = tcp->urg;
  if (rm_parse_options(ctx, pk)) return RM_PARSE_MALFORMED;
  return RM_PARSE_TCP;
}

/* Sequence-space comparisons (RFC 793 modular arithmetic). */
static __always_inline int rm_before(__u32 a, __u32 b) { return (__s32)(a - b) < 0; }
static __always_inline int rm_after(__u32 a, __u32 b) { return (__s32)(b - a) < 0; }
static __always_inline __u32 rm_max32(__u32 a, __u32 b) { return rm_after(a, b) ? a : b; }

#endif /* REMATCHER_BPF_PARSE_H_ */
