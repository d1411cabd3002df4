// KekCache: entries are per provider and KEK ID. A KMS numbers its keys
// itself, so two providers (two KMS clusters) hand out the same IDs; the
// boot test found a VM's volume wrapped under another VM's KEK when the
// cache was keyed by ID alone.
#include "daemon/kek_cache.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vcrypt {
namespace {

SecureBuffer Key(uint8_t fill) {
  std::vector<uint8_t> b(32, fill);
  return SecureBuffer::CopyOf(b);
}

uint8_t First(const std::optional<SecureBuffer>& k) { return k->data()[0]; }

TEST(KekCache, SameIdUnderTwoProvidersAreTwoEntries) {
  KekCache c;
  c.Put("kms", "1", "beta", Key(0xbb));
  c.Put("kmsdown", "1", "gamma", Key(0xcc));
  ASSERT_TRUE(c.Get("kms", "1").has_value());
  ASSERT_TRUE(c.Get("kmsdown", "1").has_value());
  EXPECT_EQ(First(c.Get("kms", "1")), 0xbb);
  EXPECT_EQ(First(c.Get("kmsdown", "1")), 0xcc);
  EXPECT_FALSE(c.Get("other", "1").has_value());
  EXPECT_TRUE(c.Contains("kms", "1"));
  EXPECT_FALSE(c.Contains("kms", "2"));
  EXPECT_EQ(c.List().size(), 2u);

  EXPECT_EQ(c.EvictKek("kms", "1"), 1u);
  EXPECT_FALSE(c.Contains("kms", "1"));
  EXPECT_EQ(First(c.Get("kmsdown", "1")), 0xcc);
}

TEST(KekCache, EvictByVmAndProvider) {
  KekCache c;
  c.Put("kms", "1", "beta", Key(1));
  c.Put("kms", "2", "gamma", Key(2));
  c.Put("host", "u-1", "alpha", Key(3));
  EXPECT_EQ(c.EvictVm("gamma"), 1u);
  EXPECT_FALSE(c.Contains("kms", "2"));
  EXPECT_EQ(c.EvictProvider("kms"), 1u);
  EXPECT_FALSE(c.Contains("kms", "1"));
  auto left = c.List();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].provider, "host");
  EXPECT_EQ(left[0].kek_id, "u-1");
  EXPECT_EQ(left[0].vm, "alpha");
  EXPECT_EQ(c.Clear(), 1u);
}

// The maximum age: a use past it finds nothing (the entry is evicted and
// reported), a use before it finds the KEK; Put restarts the age.
TEST(KekCache, MaxAgeEvictsOnUseAndReportsIt) {
  auto now = KekCache::Clock::time_point{};
  KekCache c([&] { return now; });
  const KekMaxAge ten{std::chrono::seconds{10}};
  c.Put("kms", "1", "vm1", Key(0x11));
  now += std::chrono::seconds{9};
  KekCache::EntryInfo expired;
  ASSERT_TRUE(c.Get("kms", "1", ten, &expired).has_value());
  EXPECT_TRUE(expired.kek_id.empty());
  ASSERT_EQ(c.List().size(), 1u);
  EXPECT_EQ(c.List()[0].age, std::chrono::seconds{9});
  // Unlimited (the default argument) ignores the age.
  now += std::chrono::seconds{100};
  EXPECT_TRUE(c.Get("kms", "1").has_value());
  EXPECT_FALSE(c.Get("kms", "1", ten, &expired).has_value());
  EXPECT_EQ(expired.kek_id, "1");
  EXPECT_EQ(expired.vm, "vm1");
  EXPECT_EQ(expired.age, std::chrono::seconds{109});
  EXPECT_FALSE(c.Contains("kms", "1"));  // evicted, not just hidden
  c.Put("kms", "1", "vm1", Key(0x12));
  EXPECT_EQ(First(c.Get("kms", "1", ten)), 0x12);
}

TEST(KekCache, EvictExpiredUsesEachProvidersMaximum) {
  auto now = KekCache::Clock::time_point{};
  KekCache c([&] { return now; });
  c.Put("kms", "1", "vm1", Key(1));
  c.Put("ta", "2", "vm2", Key(2));
  c.Put("local", "3", "vm3", Key(3));
  now += std::chrono::seconds{60};
  std::map<std::string, KekMaxAge> ages = {
      {"kms", KekMaxAge{std::chrono::seconds{3600}}},
      {"ta", KekMaxAge{std::chrono::seconds{60}}},
      {"local", KekMaxAge{}}};
  auto gone = c.EvictExpired(ages);
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0].provider, "ta");
  EXPECT_EQ(gone[0].vm, "vm2");
  now += std::chrono::hours{24 * 400};
  gone = c.EvictExpired(ages);
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0].provider, "kms");
  EXPECT_TRUE(c.Contains("local", "3"));  // unlimited
}

TEST(KekMaxAge, ParseAndFormat) {
  auto secs = [](std::string_view t) {
    auto a = ParseKekMaxAge(t);
    return a.ok() && a->limit ? a->limit->count() : -1;
  };
  EXPECT_EQ(secs("90s"), 90);
  EXPECT_EQ(secs("90"), 90);
  EXPECT_EQ(secs("15m"), 900);
  EXPECT_EQ(secs("1h"), 3600);
  EXPECT_EQ(secs("365d"), 365 * 86400);
  ASSERT_TRUE(ParseKekMaxAge("unlimited").ok());
  EXPECT_TRUE(ParseKekMaxAge("unlimited")->unlimited());
  for (const char* bad : {"", "0", "0s", "-1s", "1w", "h", "1.5h", "366d",
                          "99999999999999", "1h ", " 1h", "unlimitedx"}) {
    auto a = ParseKekMaxAge(bad);
    ASSERT_FALSE(a.ok()) << bad;
    EXPECT_EQ(a.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(FormatKekMaxAge(KekMaxAge{}), "unlimited");
  EXPECT_EQ(FormatKekMaxAge(*ParseKekMaxAge("3600")), "1h");
  EXPECT_EQ(FormatKekMaxAge(*ParseKekMaxAge("90s")), "90s");
  EXPECT_EQ(FormatKekMaxAge(*ParseKekMaxAge("120")), "2m");
  EXPECT_EQ(FormatKekMaxAge(*ParseKekMaxAge("2d")), "2d");
  // The defaults docs/providers.md argues.
  EXPECT_TRUE(DefaultKekMaxAge("native").unlimited());
  EXPECT_EQ(FormatKekMaxAge(DefaultKekMaxAge("standard")), "1h");
  EXPECT_EQ(FormatKekMaxAge(DefaultKekMaxAge("trusted")), "15m");
}

}  // namespace
}  // namespace vcrypt
