// Tests the C++ adapter: option parsing and the C trampolines it emits.
#include "plugins/policy_cc.h"

#include <gtest/gtest.h>

#include <string>

namespace {

using rematcher_plugin::PolicyArgs;

TEST(PolicyArgsTest, ParsesKeyValuePairs) {
  PolicyArgs args;
  std::string error;
  ASSERT_TRUE(PolicyArgs::Parse(" seed = 42 , bias=1.5,", &args, &error));
  uint64_t seed = 0;
  double bias = 0;
  std::string absent = "unchanged";
  EXPECT_TRUE(args.GetUint64("seed", &seed, &error));
  EXPECT_TRUE(args.GetDouble("bias", &bias, &error));
  EXPECT_TRUE(args.GetString("absent", &absent));
  EXPECT_EQ(seed, 42u);
  EXPECT_DOUBLE_EQ(bias, 1.5);
  EXPECT_EQ(absent, "unchanged");
  EXPECT_TRUE(args.CheckNoUnknownKeys(&error)) << error;
}

TEST(PolicyArgsTest, EmptyIsFine) {
  PolicyArgs args;
  std::string error;
  ASSERT_TRUE(PolicyArgs::Parse("", &args, &error));
  EXPECT_TRUE(args.CheckNoUnknownKeys(&error));
}

TEST(PolicyArgsTest, RejectsMalformed) {
  PolicyArgs args;
  std::string error;
  EXPECT_FALSE(PolicyArgs::Parse("seed", &args, &error));
  EXPECT_EQ(error, "malformed option 'seed': expected key=value");
  EXPECT_FALSE(PolicyArgs::Parse("=3", &args, &error));
  EXPECT_EQ(error, "malformed option '=3': empty key");
  EXPECT_FALSE(PolicyArgs::Parse("seed=1,seed=2", &args, &error));
  EXPECT_EQ(error, "option 'seed' given twice");
}

TEST(PolicyArgsTest, RejectsBadNumbers) {
  PolicyArgs args;
  std::string error;
  ASSERT_TRUE(PolicyArgs::Parse("seed=-1,x=abc", &args, &error));
  uint64_t seed = 7;
  EXPECT_FALSE(args.GetUint64("seed", &seed, &error));
  EXPECT_EQ(error, "option 'seed': '-1' is not an unsigned integer");
  EXPECT_EQ(seed, 7u);
  double x = 0;
  EXPECT_FALSE(args.GetDouble("x", &x, &error));
  EXPECT_EQ(error, "option 'x': 'abc' is not a number");
}

TEST(PolicyArgsTest, UnknownKeyNamesAcceptedOnes) {
  PolicyArgs args;
  std::string error;
  ASSERT_TRUE(PolicyArgs::Parse("seed=1,colour=red", &args, &error));
  uint64_t seed;
  ASSERT_TRUE(args.GetUint64("seed", &seed, &error));
  EXPECT_FALSE(args.CheckNoUnknownKeys(&error));
  EXPECT_EQ(error, "unknown option 'colour' (accepted: seed)");
}

// A policy that always picks the last backend and records feedback.
class LastPolicy {
 public:
  static std::unique_ptr<LastPolicy> Create(PolicyArgs& args,
                                            std::string* error) {
    std::string mode = "ok";
    args.GetString("mode", &mode);
    if (mode == "fail") {
      *error = "mode=fail requested";
      return nullptr;
    }
    return std::make_unique<LastPolicy>();
  }
  int32_t Pick(const rematcher_plugin::Snapshot& snap, const rm_request&) {
    if (snap.empty()) return rematcher_plugin::kNoPreference;
    return static_cast<int32_t>(snap.size() - 1);
  }
  void OnResult(const rm_result& r) { last_backend_id = r.backend_id; }
  uint32_t last_backend_id = 0;
};

class NoFeedbackPolicy {
 public:
  static std::unique_ptr<NoFeedbackPolicy> Create(PolicyArgs&, std::string*) {
    return std::make_unique<NoFeedbackPolicy>();
  }
  int32_t Pick(const rematcher_plugin::Snapshot&, const rm_request&) {
    return rematcher_plugin::kNoPreference;
  }
};

}  // namespace

REMATCHER_DEFINE_POLICY(LastPolicy, "last")

namespace {

TEST(AdapterTest, EntryDescribesThePolicy) {
  const rm_policy_v1* e = rematcher_policy_entry();
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->struct_size, sizeof(rm_policy_v1));
  EXPECT_EQ(e->abi_major, RM_POLICY_ABI_MAJOR);
  EXPECT_EQ(e->abi_minor, RM_POLICY_ABI_MINOR);
  EXPECT_STREQ(e->name, "last");
  EXPECT_NE(e->on_result, nullptr);
  EXPECT_EQ(
      rematcher_plugin::internal::Entry<NoFeedbackPolicy>("nf")->on_result,
      nullptr);
}

TEST(AdapterTest, CreatePickDestroyThroughTheCAbi) {
  const rm_policy_v1* e = rematcher_policy_entry();
  char err[128] = "";
  void* inst = e->create("", err, sizeof(err));
  ASSERT_NE(inst, nullptr) << err;
  rm_backend_info backends[3] = {};
  rm_snapshot snap = {sizeof(rm_snapshot), 3, 0, backends};
  rm_request req = {};
  req.struct_size = sizeof(req);
  EXPECT_EQ(e->pick(inst, &snap, &req), 2);
  rm_result res = {sizeof(rm_result), 77, RM_RESULT_OK, 0, 1, 2};
  e->on_result(inst, &res);
  EXPECT_EQ(static_cast<LastPolicy*>(inst)->last_backend_id, 77u);
  e->destroy(inst);
}

TEST(AdapterTest, SnapshotSplitsOutstandingIntoPendingAndInFlight) {
  rm_backend_info backends[2] = {};
  backends[0].outstanding = 7;
  backends[1].outstanding = 3;
  const uint32_t pending[2] = {4, 3};
  rm_snapshot raw = {sizeof(rm_snapshot), 2, 0, backends, pending};
  rematcher_plugin::Snapshot snap(raw);
  EXPECT_EQ(snap.pending(0), 4u);
  EXPECT_EQ(snap.in_flight(0), 3u);
  EXPECT_EQ(snap.in_flight(1), 0u);
  // From a 1.2 host the snapshot ends before `pending`: all in flight.
  raw.struct_size = offsetof(rm_snapshot, pending);
  EXPECT_EQ(snap.pending(0), 0u);
  EXPECT_EQ(snap.in_flight(0), 7u);
}

TEST(AdapterTest, CreateErrorsReachTheHost) {
  const rm_policy_v1* e = rematcher_policy_entry();
  char err[128] = "";
  EXPECT_EQ(e->create("mode=fail", err, sizeof(err)), nullptr);
  EXPECT_STREQ(err, "mode=fail requested");
  EXPECT_EQ(e->create("bogus=1", err, sizeof(err)), nullptr);
  EXPECT_STREQ(err, "unknown option 'bogus' (accepted: mode)");
  EXPECT_EQ(e->create("bogus", err, sizeof(err)), nullptr);
  EXPECT_STREQ(err, "malformed option 'bogus': expected key=value");
}

TEST(AdapterTest, LongErrorsAreTruncatedAndTerminated) {
  char err[8];
  rematcher_plugin::internal::CopyError("0123456789", err, sizeof(err));
  EXPECT_STREQ(err, "0123456");
}

}  // namespace
