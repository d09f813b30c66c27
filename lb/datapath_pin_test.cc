// Pinning and adoption of the datapath (DatapathOptions::pin_dir) without a
// network: what a second Load() with the same pin_dir takes over (records,
// idle queues, load counters, backends), the one-process lock, and every
// refusal (not bpffs, other table sizes, another record layout, other map flags, an
// incomplete pin directory); Unload removes it all. The attach half (the
// pinned link) needs an interface: //lb:lifecycle_test covers it.
#include <arpa/inet.h>
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "bpf/rematcher_shared.h"
#include "gtest/gtest.h"
#include "lb/datapath.h"
#include <bpf/bpf.h>

namespace rematcher {
namespace {

class PinTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (getuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (BPF, mount)";
    mnt_ = absl::StrCat(::testing::TempDir(), "/bpffs-", getpid());
    std::error_code ec;
    std::filesystem::create_directories(mnt_, ec);
    if (ec || mount("bpf", mnt_.c_str(), "bpf", 0, nullptr))
      GTEST_SKIP() << "SKIPPED: cannot mount a BPF filesystem at " << mnt_ << ": "
                   << (ec ? ec.message() : strerror(errno));
    mounted_ = true;
    pin_ = mnt_ + "/lb";
    opts_.max_clients = 1024;
    opts_.max_pool = 64;
    opts_.pin_dir = pin_;
  }
  void TearDown() override {
    std::error_code ec;
    if (!pin_.empty()) std::filesystem::remove_all(pin_, ec);
    if (mounted_) umount2(mnt_.c_str(), MNT_DETACH);
    if (!mnt_.empty()) rmdir(mnt_.c_str());
  }
  // Load() must fail, naming `want`.
  void ExpectRefused(const DatapathOptions& o, const std::string& want) {
    auto dp = Datapath::Load(o);
    ASSERT_FALSE(dp.ok()) << "adopted where it should refuse (" << want << ")";
    EXPECT_TRUE(absl::StrContains(dp.status().message(), want)) << dp.status();
  }

  std::string mnt_, pin_;
  bool mounted_ = false;
  DatapathOptions opts_;
};

TEST_F(PinTest, SecondLoadAdoptsRecordsQueuesAndCounters) {
  rm_pool rec{};
  rec.state = RM_P_IDLE;
  rec.backend_id = 1;
  rec.owner = RM_NO_ID;
  rec.key.backend_ip = 0x0a0000c6u;
  rec.key.lb_ip = 0x020000c6u;
  rec.key.backend_port = htons(8080);
  rec.key.lb_port = htons(40000);
  rec.gen = 5;
  rec.lb_nxt = 1000;
  rec.be_nxt = 2000;
  rm_backend be{};
  be.ip = 0x0a0000c6u;
  be.port = htons(8080);
  be.flags = RM_BE_ACTIVE;
  {
    auto dp = Datapath::Load(opts_);
    ASSERT_TRUE(dp.ok()) << dp.status();
    EXPECT_FALSE((*dp)->adopted());
    EXPECT_TRUE(std::filesystem::exists(pin_ + "/clients"));
    ASSERT_TRUE((*dp)->PutPool(3, rec).ok());
    ASSERT_TRUE((*dp)->PushIdle(1, 3, 5).ok());
    ASSERT_TRUE((*dp)->SetBackend(1, be).ok());
    (*dp)->SetDecision(7, 4, 2);
    // One process per pinned datapath.
    ExpectRefused(opts_, "another rematcher is running with --pin_dir");
    EXPECT_FALSE(Datapath::Unload(pin_).ok());
  }  // the process "exits": the maps stay pinned
  auto dp = Datapath::Load(opts_);
  ASSERT_TRUE(dp.ok()) << dp.status();
  EXPECT_TRUE((*dp)->adopted());
  auto got = (*dp)->GetPool(3);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->state, RM_P_IDLE);
  EXPECT_EQ(got->gen, 5);
  EXPECT_EQ(got->lb_nxt, 1000u);
  EXPECT_EQ(got->be_nxt, 2000u);
  EXPECT_EQ(got->key.lb_port, htons(40000));
  EXPECT_EQ((*dp)->BackendLoad(1).idle, 1u);
  auto b = (*dp)->GetBackend(1);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->ip, be.ip);
  EXPECT_NE((*dp)->GetDecision(7), 0u) << "the decision written before the restart is gone";
  auto popped = (*dp)->PopIdle(1);
  ASSERT_TRUE(popped.ok()) << popped.status();
  ASSERT_TRUE(popped->has_value()) << "the idle queue came back empty";
  EXPECT_EQ(**popped, 3u);
}

TEST_F(PinTest, RefusesWhatItCannotAdoptAndUnloadRemovesIt) {
  { ASSERT_TRUE(Datapath::Load(opts_).ok()); }
  // Other table sizes.
  DatapathOptions bigger = opts_;
  bigger.max_clients = 2048;
  ExpectRefused(bigger, "--max_clients");
  // Another record layout (as a build with other records would have left).
  {
    int fd = bpf_obj_get((pin_ + "/layout").c_str());
    ASSERT_GE(fd, 0);
    uint32_t zero = 0;
    uint64_t word = 0, other = 1;
    ASSERT_EQ(bpf_map_lookup_elem(fd, &zero, &word), 0);
    ASSERT_EQ(bpf_map_update_elem(fd, &zero, &other, BPF_ANY), 0);
    ExpectRefused(opts_, "another record layout");
    ASSERT_EQ(bpf_map_update_elem(fd, &zero, &word, BPF_ANY), 0);
    close(fd);
  }
  // A table of the same size pinned with other flags (before the client
  // table was mapped into userspace, it was a plain array).
  {
    const std::string path = pin_ + "/clients";
    int orig = bpf_obj_get(path.c_str());
    ASSERT_GE(orig, 0);
    ASSERT_EQ(unlink(path.c_str()), 0);
    int plain = bpf_map_create(BPF_MAP_TYPE_ARRAY, "clients", sizeof(uint32_t), sizeof(rm_client),
                               opts_.max_clients, nullptr);
    ASSERT_GE(plain, 0);
    ASSERT_EQ(bpf_obj_pin(plain, path.c_str()), 0);
    ExpectRefused(opts_, "another type, key or flags");
    ASSERT_EQ(unlink(path.c_str()), 0);
    ASSERT_EQ(bpf_obj_pin(orig, path.c_str()), 0);
    close(plain);
    close(orig);
  }
  { ASSERT_TRUE(Datapath::Load(opts_).ok()) << "the layout word and table put back are adopted again"; }
  // A pin directory missing a map.
  ASSERT_EQ(unlink((pin_ + "/decisions").c_str()), 0);
  ExpectRefused(opts_, "incomplete (no map 'decisions')");
  // Not a BPF filesystem.
  DatapathOptions elsewhere = opts_;
  elsewhere.pin_dir = absl::StrCat(::testing::TempDir(), "/not-bpffs-", getpid());
  ExpectRefused(elsewhere, "is not on a BPF filesystem");
  std::filesystem::remove_all(elsewhere.pin_dir);
  // Unload removes it all; a load then starts afresh.
  ASSERT_TRUE(Datapath::Unload(pin_).ok());
  EXPECT_FALSE(std::filesystem::exists(pin_));
  EXPECT_TRUE(absl::IsNotFound(Datapath::Unload(pin_)));
  auto fresh = Datapath::Load(opts_);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_FALSE((*fresh)->adopted());
}

}  // namespace
}  // namespace rematcher
