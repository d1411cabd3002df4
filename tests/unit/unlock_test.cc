// The boot path's policy (cli/unlock.h) under a clock the test owns.
//
// vcryptd is played by a script of answers here: the faults the policy is
// about (a KMS down for exactly two attempts, an open that hangs, a
// daemon that comes up late) are what a real vcryptd cannot produce on
// demand, and waiting for a 30 s deadline in real time would make the
// test slow. The same command against a real vcryptd and dm-crypt runs in
// tests/integration/t_udev.sh and under systemd in tests/systemd/.
#include "cli/unlock.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <deque>
#include <fstream>
#include <thread>

#include "client/client.h"
#include "common/handles.h"
#include "tests/test_util.h"
#include "tests/unit/cli_run.h"

namespace vcrypt {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

struct Request {
  std::string op;
  Json args;
  milliseconds timeout;
  milliseconds at;  // since the start
};

// What the fake vcryptd answers to one request; `takes` is how long the
// answer takes (the clock moves by that, at most by the request's
// timeout: past it the caller gives up, as Client does).
struct Answer {
  Result<Json> result;
  milliseconds takes{0};
};

class UnlockTest : public ::testing::Test {
 protected:
  UnlockTest() {
    io_.now = [this] { return start_ + elapsed_; };
    io_.sleep = [this](milliseconds d) {
      sleeps_.push_back(d);
      elapsed_ += d;
    };
    io_.log = [this](const std::string& line) { log_ += line + "\n"; };
    io_.call = [this](const std::string& op, const Json& args,
                      milliseconds timeout) -> Result<Json> {
      requests_.push_back({op, args, timeout, elapsed_});
      auto& queue = answers_[op];
      if (queue.empty())
        return MakeError(ErrorCode::kInternal, "unexpected " + op);
      Answer a = queue.front();
      if (queue.size() > 1) queue.pop_front();  // the last one repeats
      if (a.takes > timeout) {
        elapsed_ += timeout;
        return MakeError(ErrorCode::kDaemonUnavailable,
                         "vcryptd did not answer '" + op + "' within " +
                             std::to_string(timeout.count() / 1000) + "s");
      }
      elapsed_ += a.takes;
      return std::move(a.result);
    };
    opts_.marker_dir = dir_.path();
  }

  void Answers(const std::string& op, std::vector<Answer> answers) {
    answers_[op] = std::deque<Answer>(std::make_move_iterator(answers.begin()),
                                      std::make_move_iterator(answers.end()));
  }
  static Answer Fail(ErrorCode code, const std::string& msg) {
    return {MakeError(code, msg)};
  }
  static Answer Ok(Json j) { return {std::move(j)}; }
  static Answer Opened() {
    return Ok({{"path", "/dev/mapper/vcrypt-vm1-d0"}, {"already_open", false}});
  }
  size_t Count(const std::string& op) const {
    size_t n = 0;
    for (const auto& r : requests_) n += r.op == op;
    return n;
  }
  bool Marker(const char* name) const {
    struct stat st;
    return stat((dir_.path() + "/" + name).c_str(), &st) == 0;
  }
  std::string ReadMarker(const char* name) const {
    std::ifstream in(dir_.path() + "/" + name);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  testing::TempDir dir_;
  UnlockIo io_;
  UnlockOptions opts_;
  UnlockClock::time_point start_ = UnlockClock::time_point(seconds(1000));
  milliseconds elapsed_{0};
  std::vector<milliseconds> sleeps_;
  std::vector<Request> requests_;
  std::map<std::string, std::deque<Answer>> answers_;
  std::string log_;
};

TEST_F(UnlockTest, OpensWritesTheMarkerAndAsksForTheBootPathsOpen) {
  Answers("open", {Opened()});
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok());
  // One request per volume.
  ASSERT_EQ(requests_.size(), 1u);
  EXPECT_EQ(
      requests_[0].args,
      (Json{{"vm", "vm1"}, {"disk", "d0"}, {"auto", true}, {"boot", true}}));
  EXPECT_TRUE(Marker("opened"));
  EXPECT_THAT(log_, HasSubstr("vm1/d0: opened at /dev/mapper/vcrypt-vm1-d0"));
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(UnlockTest, KeyUnavailableIsRetriedWithBackoffUntilItComes) {
  Answers("open", {Fail(ErrorCode::kKeyUnavailable, "no KMS server answered"),
                   Fail(ErrorCode::kKeyUnavailable, "no KMS server answered"),
                   Opened()});
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok()) << log_;
  EXPECT_EQ(Count("open"), 3u);
  EXPECT_THAT(sleeps_, ElementsAre(seconds(1), seconds(2)));
  EXPECT_THAT(log_,
              HasSubstr("vm1/d0: no KMS server answered; retrying in 1s"));
  EXPECT_THAT(log_, HasSubstr("retrying in 2s"));
  EXPECT_TRUE(Marker("opened"));
}

TEST_F(UnlockTest, GivesUpAtTheDeadlineWithTheLastCode) {
  opts_.deadline = seconds(5);
  Answers("open", {Fail(ErrorCode::kKeyUnavailable, "no KMS server answered")});
  Status st = UnlockVolume("vm1", "d0", opts_, io_);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_EQ(st.error().message,
            "vm1/d0: giving up after 5s: no KMS server answered");
  // 0, 1, 3 and 5 s: the last wait is cut to the deadline, and no attempt
  // starts after it.
  EXPECT_THAT(sleeps_, ElementsAre(seconds(1), seconds(2), seconds(2)));
  EXPECT_EQ(Count("open"), 4u);
  EXPECT_EQ(elapsed_, seconds(5));
  EXPECT_FALSE(Marker("opened"));
}

TEST_F(UnlockTest, BackoffDoublesUpToItsCap) {
  opts_.deadline = seconds(200);
  Answers("open",
          {Fail(ErrorCode::kDaemonUnavailable, "vcryptd is not running")});
  Status st = UnlockVolume("vm1", "d0", opts_, io_);
  EXPECT_EQ(st.error().code, ErrorCode::kDaemonUnavailable);
  ASSERT_GE(sleeps_.size(), 8u);
  EXPECT_THAT(std::vector<milliseconds>(sleeps_.begin(), sleeps_.begin() + 8),
              ElementsAre(seconds(1), seconds(2), seconds(4), seconds(8),
                          seconds(16), seconds(30), seconds(30), seconds(30)));
}

TEST_F(UnlockTest, APermanentErrorIsNotRetried) {
  Answers("open", {Fail(ErrorCode::kCrypto,
                        "the KEK does not unwrap this volume's DEK")});
  Status st = UnlockVolume("vm1", "d0", opts_, io_);
  EXPECT_EQ(st.error().code, ErrorCode::kCrypto);
  EXPECT_THAT(st.error().message, HasSubstr("vm1/d0: the KEK does not unwrap"));
  EXPECT_EQ(Count("open"), 1u);
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(UnlockTest, AHangingAttemptIsCutOffButGetsItsMinimum) {
  opts_.deadline = seconds(3);
  Answers("open", {{Opened().result, seconds(100)}});
  Status st = UnlockVolume("vm1", "d0", opts_, io_);
  EXPECT_EQ(st.error().code, ErrorCode::kDaemonUnavailable);
  EXPECT_THAT(st.error().message,
              HasSubstr("did not answer 'open' within 10s"));
  ASSERT_EQ(Count("open"), 1u);
  EXPECT_EQ(requests_.back().timeout, seconds(10));
  EXPECT_EQ(elapsed_, seconds(10));
}

TEST_F(UnlockTest, EachAttemptWaitsForTheTimeLeft) {
  opts_.deadline = seconds(60);
  Answers("open", {Fail(ErrorCode::kDaemonUnavailable, "not running"),
                   {Opened().result, seconds(5)}});
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok());
  ASSERT_EQ(requests_.size(), 2u);
  EXPECT_EQ(requests_[0].timeout, seconds(60));
  EXPECT_EQ(requests_[1].timeout, seconds(59));  // after 1 s of backoff
  EXPECT_EQ(elapsed_, seconds(6));
}

TEST_F(UnlockTest, LeavesAloneWhatItShouldNotOpen) {
  Answers("open", {Ok({{"vm", "ghost"}, {"skipped", "not_registered"}})});
  ASSERT_TRUE(UnlockVolume("ghost", "d0", opts_, io_).ok());
  EXPECT_THAT(log_, HasSubstr("ghost/d0: VM 'ghost' is not registered"));
  Answers("open", {Ok({{"vm", "vm1"}, {"skipped", "auto_unlock_off"}})});
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok());
  EXPECT_THAT(log_, HasSubstr("auto-unlock is off"));
  // A reason this vcryptctl does not know is not taken for success.
  Answers("open", {Ok({{"vm", "vm1"}, {"skipped", "moon_phase"}})});
  EXPECT_EQ(UnlockVolume("vm1", "d0", opts_, io_).error().code,
            ErrorCode::kInternal);

  Answers("open", {Ok({{"already_open", false}, {"held_closed", true}})});
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok());
  EXPECT_THAT(log_, HasSubstr("closed by an admin on this boot"));
  Answers(
      "open",
      {Ok({{"already_open", true}, {"path", "/dev/mapper/vcrypt-vm1-d0"}})});
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok());
  EXPECT_THAT(log_, HasSubstr("already open at /dev/mapper/vcrypt-vm1-d0"));
  // Neither was opened by this start: its stop must not close them.
  EXPECT_FALSE(Marker("opened"));
}

TEST_F(UnlockTest, StopClosesOnlyWhatStartOpened) {
  Answers("close", {Ok({{"closed", "/dev/mapper/vcrypt-vm1-d0"}})});
  ASSERT_TRUE(StopUnlocked("vm1", "d0", opts_, io_).ok());
  EXPECT_EQ(Count("close"), 0u);

  Answers("open", {Opened()});
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok());
  ASSERT_TRUE(StopUnlocked("vm1", "d0", opts_, io_).ok());
  ASSERT_EQ(Count("close"), 1u);
  // The unit's close does not hold the volume closed against a restart.
  EXPECT_EQ(requests_.back().args,
            (Json{{"vm", "vm1"}, {"disk", "d0"}, {"auto", true}}));
  EXPECT_FALSE(Marker("opened"));
  // In use: logged, left open, and the stop still succeeds.
  ASSERT_TRUE(UnlockVolume("vm1", "d0", opts_, io_).ok());
  Answers("close", {Fail(ErrorCode::kBusy, "in use")});
  EXPECT_TRUE(StopUnlocked("vm1", "d0", opts_, io_).ok());
  EXPECT_THAT(log_, HasSubstr("vm1/d0: left open: in use"));
}

Json Volume(const std::string& disk, Result<std::string> path) {
  Json v = {{"vm", "vm1"}, {"disk", disk}, {"ok", path.ok()}};
  if (path.ok()) {
    v["path"] = *path;
    v["already_open"] = false;
  } else {
    v["error"] = {{"code", std::string(ErrorCodeName(path.error().code))},
                  {"message", path.error().message}};
  }
  return v;
}

TEST_F(UnlockTest, AllRetriesWhileAVolumeWaitsForItsKey) {
  Json first = {
      {"volumes",
       {Volume("a", std::string("/dev/mapper/vcrypt-vm1-a")),
        Volume("b", MakeError(ErrorCode::kKeyUnavailable, "KMS down"))}},
      {"opened", {"vm1/a"}}};
  Json second = {
      {"volumes", {Volume("b", std::string("/dev/mapper/vcrypt-vm1-b"))}},
      {"opened", {"vm1/b"}}};
  Answers("open_all", {Ok(first), Ok(second)});
  ASSERT_TRUE(UnlockAll(true, opts_, io_).ok()) << log_;
  EXPECT_EQ(Count("open_all"), 2u);
  EXPECT_EQ(requests_[0].args, (Json{{"file_backed", true}, {"auto", true}}));
  EXPECT_THAT(sleeps_, ElementsAre(seconds(1)));
  // Both attempts' openings are recorded for the stop.
  EXPECT_EQ(ReadMarker("opened-all"), "vm1/a\nvm1/b\n");

  Answers("close", {Ok({{"closed", "x"}})});
  ASSERT_TRUE(StopUnlocked("", "", opts_, io_).ok());
  EXPECT_EQ(Count("close"), 2u);
  EXPECT_FALSE(Marker("opened-all"));
}

TEST_F(UnlockTest, AllDoesNotWaitForAVolumeThatFailedForGood) {
  Json r = {{"volumes",
             {Volume("a", std::string("/dev/mapper/vcrypt-vm1-a")),
              Volume("b", MakeError(ErrorCode::kInvalidVolume, "bad header")),
              Volume("c", MakeError(ErrorCode::kCrypto, "wrong key"))}},
            {"opened", {"vm1/a"}}};
  Answers("open_all", {Ok(r)});
  Status st = UnlockAll(false, opts_, io_);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidVolume);  // the first failure's
  EXPECT_EQ(Count("open_all"), 1u);
  EXPECT_THAT(log_, HasSubstr("all volumes: vm1/b: bad header"));
  EXPECT_THAT(log_, HasSubstr("all volumes: vm1/c: wrong key"));
}

TEST_F(UnlockTest, AllGivesUpAtTheDeadlineAndSaysWhichVolumes) {
  opts_.deadline = seconds(4);
  Json r = {{"volumes",
             {Volume("b", MakeError(ErrorCode::kKeyUnavailable, "KMS down"))}},
            {"opened", Json::array()}};
  Answers("open_all", {Ok(r)});
  Status st = UnlockAll(false, opts_, io_);
  EXPECT_EQ(st.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_THAT(log_, HasSubstr("giving up after 4s"));
  EXPECT_THAT(log_, HasSubstr("vm1/b: KMS down"));
  EXPECT_EQ(elapsed_, seconds(4));
}

TEST(UnlockTargetTest, VmDiskOrUnitInstance) {
  EXPECT_EQ(*ParseUnlockTarget("web-01-root"),
            std::make_pair(std::string("web-01"), std::string("root")));
  EXPECT_EQ(*ParseUnlockTarget("web-01/root"),
            std::make_pair(std::string("web-01"), std::string("root")));
  for (const char* bad :
       {"nodash", "-vm-d0", "vm-", "/d0", "vm/", "a/b/c", ".vm-d0", "vm/d-0"})
    EXPECT_EQ(ParseUnlockTarget(bad).error().code, ErrorCode::kUsage) << bad;
}

TEST(UnlockCliTest, BadArgumentsAreUsageErrors) {
  using vcrypt::testing::RunCtl;
  EXPECT_EQ(RunCtl({"unlock"}).code, 2);
  EXPECT_EQ(RunCtl({"unlock", "nodash"}).code, 2);
  EXPECT_EQ(RunCtl({"unlock", "--all", "vm1/d0"}).code, 2);
  EXPECT_EQ(RunCtl({"unlock", "--file-backed", "vm1/d0"}).code, 2);
  auto r = RunCtl({"unlock", "vm1/d0", "--deadline", "soon"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--deadline: 'soon' is not a duration"));
  // A good command line reaches the (absent) daemon: exit 3 after the
  // deadline.
  r = RunCtl(
      {"unlock", "vm1/d0", "--deadline", "0", "--marker-dir", "/nonexistent"});
  EXPECT_EQ(r.code, 3);
  EXPECT_THAT(
      r.err,
      HasSubstr(
          "vcryptctl: vm1/d0: giving up after 0s: vcryptd is not running"));
}

// Client::set_timeout against a peer that accepts and never answers (a
// real vcryptd cannot be made to hang on demand).
TEST(ClientTimeoutTest, ASilentDaemonIsCutOff) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/sock";
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(
      bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener.get(), 1), 0);
  auto c = Client::Connect(path);
  ASSERT_TRUE(c.ok());
  c->set_timeout(milliseconds(300));
  const auto t0 = std::chrono::steady_clock::now();
  auto r = c->Call("ping", Json::object());
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kDaemonUnavailable);
  EXPECT_EQ(r.error().message, "vcryptd did not answer 'ping' within 0.3s");
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, seconds(5));
}

}  // namespace
}  // namespace vcrypt
