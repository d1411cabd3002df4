// Sealing the KEK to a host's one-time key (taprotocol/transport.h).
#include "taprotocol/transport.h"

#include <gtest/gtest.h>

#include "common/random.h"

namespace vcrypt {
namespace {

TEST(TransportTest, OnlyTheRecipientOpensItForTheSameContext) {
  auto host = TransportKey::Generate();
  auto other = TransportKey::Generate();
  ASSERT_TRUE(host.ok() && other.ok());
  auto kek = RandomKey(32);
  ASSERT_TRUE(kek.ok());
  auto sealed = SealTo(host->public_point(), *kek, "kek-1");
  ASSERT_TRUE(sealed.ok()) << sealed.error().message;
  auto back = SealedKey::FromJson(sealed->ToJson());
  ASSERT_TRUE(back.ok());
  auto opened = host->Open(*back, "kek-1");
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_TRUE(opened->Equals(*kek));
  // Another host's key, another context, an altered ciphertext: refused.
  EXPECT_EQ(other->Open(*back, "kek-1").error().code, ErrorCode::kCrypto);
  EXPECT_EQ(host->Open(*back, "kek-2").error().code, ErrorCode::kCrypto);
  SealedKey bent = *back;
  bent.wrapped.ciphertext[0] ^= 1;
  EXPECT_EQ(host->Open(bent, "kek-1").error().code, ErrorCode::kCrypto);
  // A fresh ephemeral key each time: two seals differ.
  auto again = SealTo(host->public_point(), *kek, "kek-1");
  ASSERT_TRUE(again.ok());
  EXPECT_NE(again->ephemeral, sealed->ephemeral);
}

TEST(TransportTest, InvalidRecipientPointsAreRefused) {
  auto kek = RandomKey(32);
  std::vector<uint8_t> off_curve(65, 0x01);
  off_curve[0] = 0x04;
  EXPECT_EQ(SealTo(off_curve, *kek, "c").error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(SealTo(std::vector<uint8_t>(33, 0x02), *kek, "c").error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(SealTo({}, *kek, "c").error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace vcrypt
