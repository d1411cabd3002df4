// OpenFailures (daemon/open_failures.h): the failed-open memory behind a
// locked or unavailable volume's "reason" in status, vm.show and
// volume.list. In memory only; needs no kernel. The waits for the next
// second (timestamps are RFC 3339, whole seconds) make this ~2-3 s.
#include "daemon/open_failures.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "common/clock.h"

namespace vcrypt {
namespace {

constexpr char kUuid[] = "0123ABCD-4567-89ef-0123-456789ABCDEF";
// The same UUID as a LUKS header or a by-uuid link may spell it.
constexpr char kLower[] = "0123abcd-4567-89ef-0123-456789abcdef";
constexpr char kCompact[] = "0123abcd456789ef0123456789abcdef";
constexpr char kOther[] = "ffffffff-4567-89ef-0123-456789abcdef";

void WaitForNextSecond() {
  const std::string now = NowRfc3339();
  while (NowRfc3339() == now)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

TEST(OpenFailures, KeyedByUuidWhateverItsSpelling) {
  OpenFailures f;
  EXPECT_FALSE(f.FindFailure(kUuid).has_value());
  f.RecordFailure(kUuid, MakeError(ErrorCode::kKeyUnavailable, "kms down"));
  auto got = f.FindFailure(kCompact);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code, ErrorCode::kKeyUnavailable);
  EXPECT_EQ(got->message, "kms down");
  EXPECT_FALSE(got->since.empty());
  EXPECT_EQ(got->since, got->last_attempt);
  EXPECT_FALSE(f.FindFailure(kOther).has_value());

  f.ClearFailure(kLower);
  EXPECT_FALSE(f.FindFailure(kUuid).has_value());
}

TEST(OpenFailures, SinceIsKeptForTheSameCodeAndRestartsWithAnother) {
  OpenFailures f;
  f.RecordFailure(kUuid, MakeError(ErrorCode::kKeyUnavailable, "first"));
  const std::string first = f.FindFailure(kUuid)->since;
  WaitForNextSecond();
  f.RecordFailure(kLower, MakeError(ErrorCode::kKeyUnavailable, "second"));
  auto again = f.FindFailure(kUuid);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->since, first);
  EXPECT_NE(again->last_attempt, first);
  EXPECT_EQ(again->message, "second");

  f.RecordFailure(kUuid, MakeError(ErrorCode::kCrypto, "third"));
  auto other = f.FindFailure(kUuid);
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(other->code, ErrorCode::kCrypto);
  EXPECT_NE(other->since, first);
  EXPECT_EQ(other->since, other->last_attempt);
}

TEST(OpenFailures, MissingSinceIsTheFirstSightingUntilForgotten) {
  OpenFailures f;
  const std::string first = f.MissingSince(kUuid, true);
  EXPECT_FALSE(first.empty());
  WaitForNextSecond();
  EXPECT_EQ(f.MissingSince(kCompact, true), first);
  EXPECT_NE(f.MissingSince(kOther, true), first);  // another volume
  EXPECT_EQ(f.MissingSince(kLower, false), "");
  EXPECT_NE(f.MissingSince(kUuid, true), first);
  // Missing devices and failed opens are separate records.
  EXPECT_FALSE(f.FindFailure(kUuid).has_value());
}

}  // namespace
}  // namespace vcrypt
