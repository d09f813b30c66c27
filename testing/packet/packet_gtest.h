// gtest glue for packet comparisons: EXPECT_TRUE(PacketsEqual(want, got))
// prints a field-by-field diff and both packets described, not a byte blob.
#ifndef REMATCHER_TESTING_PACKET_PACKET_GTEST_H_
#define REMATCHER_TESTING_PACKET_PACKET_GTEST_H_

#include "gtest/gtest.h"
#include "testing/packet/packet.h"

namespace rematcher::packet {

inline ::testing::AssertionResult PacketsEqual(const Bytes& expected, const Bytes& actual) {
  std::string diff = DiffPackets(expected, actual);
  if (diff.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "packets differ:\n"
                                       << diff << "\nexpected:\n"
                                       << Parse(expected).Describe() << "\nactual:\n"
                                       << Parse(actual).Describe();
}

}  // namespace rematcher::packet

#endif  // REMATCHER_TESTING_PACKET_PACKET_GTEST_H_
