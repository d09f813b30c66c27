// ClientResets: tells a client again that its connection is gone, after its
// backend reset the pooled connection under it mid-exchange.
//
// The datapath passes the backend's RST on to the client once, and nothing
// retransmits a reset. If it is lost, a client waiting for the rest of a
// response, with nothing of its own to send, waits for ever. If its seq is
// past what the client has (response bytes lost ahead of it), Linux refuses
// it with a challenge ACK. So the core sends the client an RST of its own,
// at once and twice more within the record's linger, and the datapath
// answers any segment the client sends meanwhile with an RST at the seq it
// acknowledges (RM_FIN_B_RST). Each resend first checks that the record is
// still that closed connection: a client that reconnected from the same
// port has a new record (and a new sequence space) and is left alone.
//
// Frames go out of the interface XDP serves, to the MAC the client's
// segments came from (the client, or its gateway), with its VLAN tag: the
// path the datapath's own replies take, so no route to the client is needed.
#ifndef REMATCHER_LB_CLIENT_RESET_H_
#define REMATCHER_LB_CLIENT_RESET_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bpf/rematcher_shared.h"

namespace rematcher {

// An RST|ACK from the VIP to client `c`: seq its s_nxt (what the client has
// when nothing was lost), ack its c_nxt, no options. Ethernet to c.mac from
// src_mac, 802.1Q-tagged when c.vlan_tci is set.
std::vector<uint8_t> ClientResetFrame(const rm_client& c, const uint8_t src_mac[6]);

class ClientResets {
 public:
  // When the resends go, after the first (sent by Add): all well within
  // CoreOptions::closed_linger (2 s), while the datapath still knows the
  // record and answers challenge ACKs.
  static constexpr absl::Duration kResendAfter[] = {absl::Milliseconds(250), absl::Seconds(1)};
  // Records waiting for a resend, at most (a backend dying under thousands
  // of clients): beyond it, clients get the datapath's reset and the first
  // of these only.
  static constexpr size_t kMaxPending = 16384;

  ClientResets() = default;
  ~ClientResets();
  ClientResets(const ClientResets&) = delete;
  ClientResets& operator=(const ClientResets&) = delete;

  // A packet socket on `ifindex` (the interface XDP is attached to).
  absl::Status Open(int ifindex);

  // Client `id`, whose record `c` its backend just reset: an RST now, and
  // the resends queued.
  void Add(uint32_t id, const rm_client& c, absl::Time now);
  // Sends the resends due whose record (read through `lookup`) is still the
  // same closed connection, and drops the others.
  void Run(absl::Time now, absl::FunctionRef<absl::StatusOr<rm_client>(uint32_t)> lookup);

  uint64_t sent() const { return sent_; }
  uint64_t send_errors() const { return send_errors_; }
  size_t pending() const { return q_[0].size() + q_[1].size(); }

 private:
  struct Pending {
    uint32_t id;
    rm_flow_key key;
    uint32_t s_nxt;
    absl::Time due;
  };
  static bool SameConnection(const Pending& p, const rm_client& c);
  void Send(const rm_client& c);

  int fd_ = -1;
  int ifindex_ = 0;
  uint8_t mac_[6] = {};
  // Per resend, those waiting for it: one delay each, so each is in order
  // of due time.
  std::deque<Pending> q_[2];
  uint64_t sent_ = 0, send_errors_ = 0;
};

}  // namespace rematcher

#endif  // REMATCHER_LB_CLIENT_RESET_H_
