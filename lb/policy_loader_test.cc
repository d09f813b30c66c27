// LoadPolicy against real .so files: one broken plugin per failure mode
// (plugins/testdata), plus the real rr policy for the happy path.
#include "lb/policy_loader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace rematcher {
namespace {

// gmock is not linked; a substring check that prints both sides.
#define EXPECT_HAS_SUBSTR(haystack, needle)        \
  EXPECT_TRUE(absl::StrContains(haystack, needle)) \
      << "message: " << (haystack) << "\nexpected to contain: " << (needle)

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/rematcher/", path);
}

std::string Fixture(const std::string& name) {
  return Runfile(absl::StrCat("plugins/testdata/lib", name, ".so"));
}

absl::Status LoadFixture(const std::string& name,
                         const std::string& args = "") {
  return LoadPolicy(Fixture(name), args, {}).status();
}

BackendInfo Healthy(uint32_t id) {
  BackendInfo b = {};
  b.id = id;
  b.weight = 1;
  b.flags = RM_BACKEND_HEALTHY;
  return b;
}

TEST(LoadPolicyTest, LoadsBuiltinByNameFromSearchDirs) {
  auto policy = LoadPolicy("rr", "", {"/nonexistent", Runfile("policies")});
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)->name(), "rr");
  EXPECT_EQ((*policy)->abi_version().major, RM_POLICY_ABI_MAJOR);
  EXPECT_EQ((*policy)->abi_version().minor, RM_POLICY_ABI_MINOR);
  EXPECT_EQ((*policy)->origin(), Runfile("policies/rr/librr.so"));

  std::vector<BackendInfo> bs = {Healthy(1), Healthy(2)};
  Snapshot snap{123, bs};
  EXPECT_EQ((*policy)->Pick(snap, {}), 0u);
  EXPECT_EQ((*policy)->Pick(snap, {}), 1u);
  EXPECT_EQ((*policy)->Pick({0, {}}, {}), std::nullopt);
  PolicyStats s = (*policy)->stats();
  EXPECT_EQ(s.calls, 3u);
  EXPECT_EQ(s.picked, 2u);
  EXPECT_EQ(s.no_preference, 1u);
  EXPECT_EQ(s.plugin_errors, 0u);
}

TEST(LoadPolicyTest, DirectoryHoldingTheSoDirectlyAlsoWorks) {
  auto policy = LoadPolicy("rr", "", {Runfile("policies/rr")});
  ASSERT_TRUE(policy.ok()) << policy.status();
}

TEST(LoadPolicyTest, LoadsByPath) {
  auto policy = LoadPolicy(Runfile("policies/rr/librr.so"), "", {});
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)->name(), "rr");
}

TEST(LoadPolicyTest, SamePluginTwiceGivesIndependentInstances) {
  auto a = LoadPolicy("rr", "", {Runfile("policies")});
  auto b = LoadPolicy("rr", "", {Runfile("policies")});
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<BackendInfo> bs = {Healthy(1), Healthy(2)};
  EXPECT_EQ((*a)->Pick({0, bs}, {}), 0u);
  EXPECT_EQ((*b)->Pick({0, bs}, {}), 0u);
  a->reset();  // dlclose of one must not unload the other's code
  EXPECT_EQ((*b)->Pick({0, bs}, {}), 1u);
}

TEST(LoadPolicyTest, UnknownNameListsWhereItLooked) {
  absl::Status s = LoadPolicy("nosuch", "", {"/dir/a", "/dir/b"}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_HAS_SUBSTR(std::string(s.message()),
                    "policy 'nosuch' not found: no libnosuch.so in any "
                    "policy directory (/dir/a/libnosuch.so, "
                    "/dir/a/nosuch/libnosuch.so, /dir/b/libnosuch.so, "
                    "/dir/b/nosuch/libnosuch.so)");
}

TEST(LoadPolicyTest, MissingPath) {
  absl::Status s = LoadPolicy("/no/such/libx.so", "", {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(),
            "policy plugin /no/such/libx.so does not exist or is not a regular "
            "file");
}

TEST(LoadPolicyTest, BadNames) {
  EXPECT_EQ(LoadPolicy("", "", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = LoadPolicy("libmine.so", "", {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_HAS_SUBSTR(std::string(s.message()), "write ./libmine.so");
}

TEST(LoadPolicyTest, NotAnElfFile) {
  absl::Status s = LoadFixture("not_elf");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS_SUBSTR(std::string(s.message()),
                    absl::StrCat("policy plugin ", Fixture("not_elf"),
                                 " could not be loaded: "));
}

TEST(LoadPolicyTest, MissingEntrySymbol) {
  absl::Status s = LoadFixture("no_entry");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS_SUBSTR(
      std::string(s.message()),
      absl::StrCat("policy plugin ", Fixture("no_entry"),
                   " does not export rematcher_policy_entry(): not a rematcher "
                   "policy"));
}

TEST(LoadPolicyTest, EntryReturnsNull) {
  absl::Status s = LoadFixture("null_entry");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            absl::StrCat("policy plugin ", Fixture("null_entry"),
                         ": rematcher_policy_entry() returned NULL instead of "
                         "a policy descriptor"));
}

TEST(LoadPolicyTest, WrongMajorVersionIsRefused) {
  absl::Status s = LoadFixture("wrong_major");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      s.message(),
      absl::StrCat("policy plugin ", Fixture("wrong_major"),
                   " was built against policy ABI ", RM_POLICY_ABI_MAJOR + 1,
                   ".0 but this rematcher "
                   "speaks ",
                   RM_POLICY_ABI_MAJOR, ".", RM_POLICY_ABI_MINOR,
                   "; major versions are incompatible, rebuild the "
                   "plugin against this rematcher's "
                   "plugins/rematcher_policy.h"));
}

TEST(LoadPolicyTest, StructSizeTooSmall) {
  absl::Status s = LoadFixture("small_struct");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            absl::StrCat("policy plugin ", Fixture("small_struct"),
                         ": descriptor struct_size is 32 bytes but ABI 1.0 "
                         "needs at least 48 (create, destroy, pick, "
                         "on_result); corrupt or hand-built descriptor"));
}

TEST(LoadPolicyTest, NullPick) {
  absl::Status s = LoadFixture("null_pick");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            absl::StrCat("policy plugin ", Fixture("null_pick"),
                         " (policy 'null_pick'): required function 'pick' is "
                         "NULL"));
}

TEST(LoadPolicyTest, NullName) {
  absl::Status s = LoadFixture("null_name");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), absl::StrCat("policy plugin ", Fixture("null_name"),
                                      ": descriptor has a NULL or empty name"));
}

TEST(LoadPolicyTest, CreateFailureCarriesThePluginsMessage) {
  absl::Status s = LoadFixture("create_fails", "colour=blue");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            absl::StrCat("policy 'create_fails' (", Fixture("create_fails"),
                         ") refused --policy_args=\"colour=blue\": "
                         "create_fails does not like 'colour=blue'"));
}

TEST(LoadPolicyTest, BuiltinArgsErrorsReachTheOperator) {
  absl::Status s = LoadPolicy("rr", "seed=1", {Runfile("policies")}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_HAS_SUBSTR(std::string(s.message()),
                    "policy 'rr' (" + Runfile("policies/rr/librr.so") +
                        ") refused --policy_args=\"seed=1\": unknown option "
                        "'seed' (accepted: none)");
}

TEST(LoadPolicyTest, OutOfRangePickIsCountedNotFollowed) {
  auto policy = LoadPolicy(Fixture("out_of_range"), "", {});
  ASSERT_TRUE(policy.ok()) << policy.status();
  std::vector<BackendInfo> bs = {Healthy(1), Healthy(2), Healthy(3)};
  for (int i = 0; i < 10; ++i) {
    auto pick = (*policy)->Pick({0, bs}, {});
    // Odd calls return index 3 (== size): refused. Even calls return 0.
    if (i % 2 == 0) {
      EXPECT_EQ(pick, std::nullopt) << i;
    } else {
      EXPECT_EQ(pick, 0u) << i;
    }
  }
  PolicyStats s = (*policy)->stats();
  EXPECT_EQ(s.calls, 10u);
  EXPECT_EQ(s.plugin_errors, 5u);
  EXPECT_EQ(s.picked, 5u);
  EXPECT_EQ(s.no_preference, 0u);
}

TEST(LoadPolicyTest, PickOfIneligibleBackendIsRefused) {
  // The fixture always answers backend 0 on even calls; make it draining.
  auto policy = LoadPolicy(Fixture("out_of_range"), "", {});
  ASSERT_TRUE(policy.ok()) << policy.status();
  std::vector<BackendInfo> bs = {Healthy(1), Healthy(2)};
  bs[0].flags |= RM_BACKEND_DRAINING;
  (*policy)->Pick({0, bs}, {});                           // out of range
  EXPECT_EQ((*policy)->Pick({0, bs}, {}), std::nullopt);  // draining
  EXPECT_EQ((*policy)->stats().plugin_errors, 2u);
  EXPECT_EQ((*policy)->stats().picked, 0u);
}

TEST(LoadPolicyTest, NewerMinorLoadsAndGetsFeedback) {
  auto policy = LoadPolicy(Fixture("newer_minor"), "", {});
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)->abi_version().minor, RM_POLICY_ABI_MINOR + 7);
  std::vector<BackendInfo> bs = {Healthy(10), Healthy(20), Healthy(30)};
  Result r;
  r.backend_id = 20;
  (*policy)->OnResult(r);
  EXPECT_EQ((*policy)->Pick({0, bs}, {}), 1u);
}

TEST(WrapPolicyEntryTest, ValidatesLikeLoadPolicy) {
  absl::Status s = WrapPolicyEntry(nullptr, "", "static").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_HAS_SUBSTR(std::string(s.message()), "policy plugin static:");
  rm_policy_v1 tiny = {};
  tiny.struct_size = 8;
  s = WrapPolicyEntry(&tiny, "", "static").status();
  EXPECT_EQ(s.message(),
            "policy plugin static: descriptor struct_size is 8 bytes, smaller "
            "than the 16-byte header every ABI version starts with; corrupt "
            "descriptor");
}

TEST(DefaultPolicySearchDirsTest, IncludesRunfilesAndExeRelativeDirs) {
  std::vector<std::string> dirs =
      DefaultPolicySearchDirs("/opt/lb/bin/rematcher");
  auto has = [&](const std::string& d) {
    return std::find(dirs.begin(), dirs.end(), d) != dirs.end();
  };
  EXPECT_TRUE(has("/opt/lb/bin/rematcher.runfiles/rematcher/policies"));
  EXPECT_TRUE(has(Runfile("policies")));  // from $TEST_SRCDIR
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  ASSERT_GT(n, 0);
  std::string self(exe, n);
  EXPECT_TRUE(has(self + ".runfiles/rematcher/policies"));
  std::string dir = self.substr(0, self.rfind('/'));
  EXPECT_TRUE(has(dir + "/../lib/rematcher/policies"));
  // No duplicates.
  std::vector<std::string> sorted = dirs;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end());
  // And they find the built-ins from inside this test.
  EXPECT_TRUE(LoadPolicy("rr", "", dirs).ok());
}

}  // namespace
}  // namespace rematcher
