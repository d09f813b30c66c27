// SPDX-License-Identifier: GPL-2.0
// paws_trace.bpf.c: attributes every TCP segment the kernel drops under
// PAWS (RFC 7323; nstat PAWSEstab) to what it carried.
//
// A BTF tracepoint on skb:kfree_skb keeps the drops with reason
// SKB_DROP_REASON_TCP_RFC7323_PAWS and reads, from the receiving socket
// (the tracepoint's rx_sk, kernels >= 6.11), rcv_nxt and ts_recent, and from
// the segment's control block its sequence range:
//   stale  every byte (and FIN) of it is below rcv_nxt: the receiver had it
//          already. An old copy, from a network that duplicates or holds a
//          frame past its retransmission; dropping it is what PAWS is for.
//   fresh  it carried bytes the receiver did not have. These it must get
//          again by retransmission: a TSval that went backwards on the way
//          (a translation bug) shows up here; so does a segment a network
//          held back past a later one that updated ts_recent.
// Each classified drop's age (ts_recent - TSval, ms ticks) is counted too:
// a network that holds a frame back at most H ms cannot make one older than
// about H ticks, while a TSval that jumped backwards can be anything.
// Kernel structs are declared locally, just the fields read, and relocated
// by libbpf CO-RE against the running kernel's BTF.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "testing/tcpdrops/paws_trace_shared.h"

struct sock_common {
  __be32 skc_daddr;
  __be32 skc_rcv_saddr;
  __be16 skc_dport;
  __u16 skc_num;
  unsigned char skc_state;
} __attribute__((preserve_access_index));

struct sock {
  struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct tcp_options_received {
  __u32 ts_recent;
  __u32 rcv_tsval;
} __attribute__((preserve_access_index));

struct tcp_sock {
  __u32 rcv_nxt;
  struct tcp_options_received rx_opt;
} __attribute__((preserve_access_index));

struct sk_buff {
  char cb[48];
  unsigned char *head;
  __u16 network_header;
} __attribute__((preserve_access_index));

enum skb_drop_reason {
  SKB_DROP_REASON_TCP_RFC7323_PAWS = 36,
};

/* TCP states of full sockets that hold a tcp_sock (not TIME_WAIT = 6,
 * NEW_SYN_RECV = 12). */
#define PT_TCP_TIME_WAIT 6
#define PT_TCP_NEW_SYN_RECV 12
#define PT_TCP_LISTEN 10

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024);
  __type(key, __u32); /* receiving address, network order */
  __type(value, struct pt_counts);
} counts SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, PT_LOG_SLOTS);
  __type(key, __u32);
  __type(value, struct pt_drop);
} drop_log SEC(".maps");

__u64 logged = 0;       /* fresh slots used: min(this, PT_LOG_FRESH_SLOTS) */
__u64 logged_old = 0;   /* other slots used: min(this, PT_LOG_SLOTS - PT_LOG_FRESH_SLOTS) */
__u32 log_min_age = 0;  /* also log non-fresh drops this old (0: none) */

SEC("tp_btf/kfree_skb")
int BPF_PROG(paws_drop, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
             struct sock *rx_sk) {
  if (reason != bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_TCP_RFC7323_PAWS))
    return 0;
  if (!rx_sk) return 0; /* cannot be attributed: the totals check shows it */
  unsigned char state = BPF_CORE_READ(rx_sk, __sk_common.skc_state);
  int request = state == PT_TCP_NEW_SYN_RECV || state == PT_TCP_LISTEN;
  __u32 addr = 0;
  if (request) {
    /* tcp_check_req reports the drop against the listener, whose address
     * may be the wildcard: key it by the segment's destination instead
     * (the IPv4 header's daddr, 16 bytes in). */
    unsigned char *head = BPF_CORE_READ(skb, head);
    __u16 nh = BPF_CORE_READ(skb, network_header);
    bpf_probe_read_kernel(&addr, sizeof(addr), head + nh + 16);
  } else {
    addr = BPF_CORE_READ(rx_sk, __sk_common.skc_rcv_saddr);
  }
  struct pt_counts *c = bpf_map_lookup_elem(&counts, &addr);
  if (!c) {
    struct pt_counts zero = {};
    bpf_map_update_elem(&counts, &addr, &zero, BPF_NOEXIST);
    c = bpf_map_lookup_elem(&counts, &addr);
    if (!c) return 0;
  }
  if (request) {
    __sync_fetch_and_add(&c->request, 1);
    return 0;
  }
  if (state == PT_TCP_TIME_WAIT) {
    __sync_fetch_and_add(&c->timewait, 1);
    return 0;
  }
  /* struct tcp_skb_cb starts with seq, end_seq. */
  __u32 cb[2] = {};
  bpf_probe_read_kernel(cb, sizeof(cb), &skb->cb[0]);
  struct tcp_sock *tp = (struct tcp_sock *)rx_sk;
  __u32 rcv_nxt = BPF_CORE_READ(tp, rcv_nxt);
  __u32 ts_recent = BPF_CORE_READ(tp, rx_opt.ts_recent);
  __u32 tsval = BPF_CORE_READ(tp, rx_opt.rcv_tsval);
  __s32 age = (__s32)(ts_recent - tsval);
  __u32 bucket = age < 0 ? 0 : age >= PT_AGE_BUCKETS - 1 ? PT_AGE_BUCKETS - 1 : (__u32)age;
  if (bucket < PT_AGE_BUCKETS) __sync_fetch_and_add(&c->age[bucket], 1);
  __u32 kind;
  if (cb[1] == cb[0]) {
    kind = PT_PURE_ACK;
    __sync_fetch_and_add(&c->pure_ack, 1);
  } else if ((__s32)(cb[1] - rcv_nxt) <= 0) {
    kind = PT_STALE;
    __sync_fetch_and_add(&c->stale, 1);
  } else {
    kind = PT_FRESH;
    __sync_fetch_and_add(&c->fresh, 1);
  }
  if (kind != PT_FRESH && (log_min_age == 0 || age < (__s32)log_min_age)) return 0;
  __u32 slot;
  if (kind == PT_FRESH) {
    slot = (__u32)__sync_fetch_and_add(&logged, 1);
    if (slot >= PT_LOG_FRESH_SLOTS) return 0;
  } else {
    slot = (__u32)__sync_fetch_and_add(&logged_old, 1);
    if (slot >= PT_LOG_SLOTS - PT_LOG_FRESH_SLOTS) return 0;
    slot += PT_LOG_FRESH_SLOTS;
  }
  struct pt_drop *d = bpf_map_lookup_elem(&drop_log, &slot);
  if (!d) return 0;
  d->saddr = BPF_CORE_READ(rx_sk, __sk_common.skc_daddr);
  d->daddr = addr;
  d->sport = bpf_ntohs(BPF_CORE_READ(rx_sk, __sk_common.skc_dport));
  d->dport = BPF_CORE_READ(rx_sk, __sk_common.skc_num);
  d->seq = cb[0];
  d->end_seq = cb[1];
  d->rcv_nxt = rcv_nxt;
  d->tsval = tsval;
  d->ts_recent = ts_recent;
  d->kind = kind;
  return 0;
}

char LICENSE[] SEC("license") = "GPL";
