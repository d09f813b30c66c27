#include <gtest/gtest.h>
#include <absl/status/status.h>
#include <absl/strings/str_cat.h>
#include <bpf/libbpf.h>
#include <glog/logging.h>
TEST(X, Y) { EXPECT_EQ(absl::StrCat("a", 1), "a1"); EXPECT_TRUE(absl::OkStatus().ok()); LOG(INFO) << libbpf_major_version(); }
