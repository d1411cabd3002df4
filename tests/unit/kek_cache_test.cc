// KekCache: entries are per provider and KEK ID. A KMS numbers its keys
// itself, so two providers (two KMS clusters) hand out the same IDs; the
// boot test found a VM's volume wrapped under another VM's KEK when the
// cache was keyed by ID alone.
#include "daemon/kek_cache.h"

#include <gtest/gtest.h>

#include <cstdint>
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

}  // namespace
}  // namespace vcrypt
