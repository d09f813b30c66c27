/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * faults_shared.h: what the tc fault program (faults.bpf.c) and userspace
 * (faults.cc) share. One copy for both; faults.cc static_asserts the sizes.
 *
 * Directions are named from the host's point of view, at the switch-side veth
 * peer of a testbed host: FLT_DIR_FROM_HOST is that peer's tc ingress (frames
 * the host sent), FLT_DIR_TO_HOST its tc egress (frames going to the host).
 */
#ifndef REMATCHER_TESTING_FAULTS_FAULTS_SHARED_H_
#define REMATCHER_TESTING_FAULTS_FAULTS_SHARED_H_

#include <linux/types.h>

#define FLT_PPM 1000000u /* rates are parts per million of frames */

enum flt_dir {
  FLT_DIR_FROM_HOST = 0,
  FLT_DIR_TO_HOST = 1,
  FLT_DIRS = 2,
};

/* Per-direction counters, index dir * FLT_CTR_MAX + ctr of a per-CPU array. */
enum flt_ctr {
  FLT_CTR_SEEN = 0,         /* frames the hook saw (own duplicates excluded) */
  FLT_CTR_DROPPED,          /* dropped by the loss draw */
  FLT_CTR_DUPLICATED,       /* an extra copy was sent */
  FLT_CTR_DUP_FAILED,       /* bpf_clone_redirect failed: no copy sent */
  FLT_CTR_CORRUPT_ELIGIBLE, /* IPv4 TCP/UDP frames with payload, not dropped */
  FLT_CTR_CORRUPTED,        /* one payload byte flipped, checksum left stale */
  FLT_CTR_RST_DROPPED,      /* a TCP RST dropped by the drop_resets budget */
  FLT_CTR_ACK_DROPPED,      /* a pure TCP ACK dropped before drop_acks_until_ns */
  FLT_CTR_MAX,
};

/* One entry per direction of the `config` array; userspace may rewrite it
 * while traffic flows. 32 bytes. */
struct flt_config {
  __u32 loss_ppm;      /*  0 */
  __u32 dup_ppm;       /*  4 */
  __u32 corrupt_ppm;   /*  8 */
  __u32 drop_resets;   /* 12: TCP RSTs still to drop (a budget the program
                          counts down; signed below zero when overdrawn) */
  __u64 seed;          /* 16: 0 = kernel prandom, else per-CPU xorshift */
  __u64 drop_acks_until_ns; /* 24: until then (bpf_ktime_get_ns, CLOCK_MONOTONIC)
                               every pure TCP ACK (no payload; no SYN, FIN or
                               RST) is dropped: acknowledgements lost */
};

/* Duplicates are tagged with this skb->mark so the hook they re-enter passes
 * them untouched (and clears the mark). */
#define FLT_DUP_MARK 0x0fa17d0bu

#endif /* REMATCHER_TESTING_FAULTS_FAULTS_SHARED_H_ */
