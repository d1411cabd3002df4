// Progress events (docs/protocol.md, "Events"): vm.rekey's disk.start and
// disk.done through the real Server and client library, vcryptctl's --json
// event lines, and the terminal progress display (ProgressRenderer).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "client/client.h"
#include "common/handles.h"
#include "common/wire.h"
#include "tests/test_util.h"
#include "tests/unit/daemon_fixture.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;

// An event about disk `disk` of `vm`, with `extra` members.
nlohmann::json DiskEvent(
    const std::string& type, const std::string& vm, const std::string& disk,
    const nlohmann::json& extra = nlohmann::json::object()) {
  nlohmann::json e = {{"type", type}, {"vm", vm}, {"disk", disk}};
  e.update(extra);
  return e;
}
using Json = nlohmann::json;
using testing::DaemonTest;

#define SKIP_UNLESS_ROOT()                                                     \
  do {                                                                         \
    if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root"; \
  } while (0)

// vm.rekey on the fixture's socket, with every event it sends.
struct Rekey {
  Result<Json> result = MakeError(ErrorCode::kInternal, "not run");
  std::vector<Json> events;
};

class EventsTest : public DaemonTest {
 protected:
  Rekey RekeyWithEvents(const Json& args) {
    Rekey out;
    auto c = Client::Connect(socket_);
    if (!c.ok()) {
      out.result = std::move(c).error();
      return out;
    }
    out.result = c->Call("vm.rekey", args, nullptr, nullptr,
                         [&](const Json& ev) { out.events.push_back(ev); });
    return out;
  }
};

TEST_F(EventsTest, ShallowRekeyBracketsEachDiskWithStartAndDone) {
  SKIP_UNLESS_ROOT();
  MakeVolumes({"d0", "d1"});
  Rekey r = RekeyWithEvents({{"vm", "vm1"}});
  ASSERT_TRUE(r.result.ok()) << r.result.error().message;
  EXPECT_EQ((*r.result)["disks"].size(), 2u);
  const std::vector<Json> want = {
      {{"type", "disk.start"}, {"vm", "vm1"}, {"disk", "d0"}, {"deep", false}},
      {{"type", "disk.done"},
       {"vm", "vm1"},
       {"disk", "d0"},
       {"result", "rekeyed"}},
      {{"type", "disk.start"}, {"vm", "vm1"}, {"disk", "d1"}, {"deep", false}},
      {{"type", "disk.done"},
       {"vm", "vm1"},
       {"disk", "d1"},
       {"result", "rekeyed"}},
  };
  ASSERT_EQ(r.events.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(r.events[i], want[i]) << i << ": " << r.events[i].dump();
}

// A disk that fails still gets its disk.done, with the error; the others
// go on, and the answer is the error that leaves the rekey pending.
TEST_F(EventsTest, FailedDiskIsReportedInItsDoneEvent) {
  SKIP_UNLESS_ROOT();
  MakeVolumes({"d0", "d1"});
  fs::remove(dir_ + "/d0.img");
  Rekey r = RekeyWithEvents({{"vm", "vm1"}});
  ASSERT_FALSE(r.result.ok());
  EXPECT_EQ(r.result.error().code, ErrorCode::kNotFound);
  ASSERT_EQ(r.events.size(), 4u);
  const Json& d0 = r.events[1];
  EXPECT_EQ(d0["type"], "disk.done");
  EXPECT_EQ(d0["disk"], "d0");
  EXPECT_EQ(d0["result"], "failed");
  EXPECT_EQ(d0["error"]["code"], "not_found");
  EXPECT_EQ(d0["error"]["exit"], 5);
  EXPECT_FALSE(d0["error"]["message"].get<std::string>().empty());
  EXPECT_EQ(r.events[3]["disk"], "d1");
  EXPECT_EQ(r.events[3]["result"], "rekeyed");
  EXPECT_FALSE(r.events[3].contains("error"));
}

// A client that takes no events still gets the answer, and the connection
// stays in step for the next request.
TEST_F(EventsTest, ClientWithoutCallbackSkipsEvents) {
  SKIP_UNLESS_ROOT();
  MakeVolumes({"d0", "d1"});
  auto c = Client::Connect(socket_);
  ASSERT_TRUE(c.ok()) << c.error().message;
  auto r = c->Call("vm.rekey", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["disks"].size(), 2u);
  EXPECT_EQ((*r)["disks"][0]["result"], "rekeyed");
  auto ping = c->Call("ping", Json::object());
  ASSERT_TRUE(ping.ok()) << ping.error().message;
  EXPECT_EQ((*ping)["pong"], true);
}

// A client that goes away after the first event does not stop the rekey
// halfway: the next rekey (which waits for the VM's lock) finds no
// unfinished one to resume.
TEST_F(EventsTest, ClientGoneMidRekeyLetsItFinish) {
  SKIP_UNLESS_ROOT();
  MakeVolumes({"d0", "d1", "d2"});
  {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(
        connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_TRUE(
        WriteMessage(fd.get(), {{"op", "vm.rekey"}, {"args", {{"vm", "vm1"}}}})
            .ok());
    auto first = ReadMessage(fd.get());
    ASSERT_TRUE(first.ok()) << first.error().message;
    EXPECT_EQ(first->body["event"]["type"], "disk.start");
  }  // closed
  auto again = Call("vm.rekey", {{"vm", "vm1"}});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ((*again)["resumed"], false);
  EXPECT_TRUE(Call("ping").ok());
}

// vcryptctl --json: each event as one compact line as it comes, then the
// result as always. Without --json (and stderr not a terminal) nothing
// but the usual output.
TEST_F(EventsTest, CliJsonPrintsEventLinesBeforeTheResult) {
  SKIP_UNLESS_ROOT();
  MakeVolumes({"d0", "d1"});
  std::vector<const char*> argv = {
      "vcryptctl", "--socket", socket_.c_str(), "--json", "vm", "rekey", "vm1"};
  std::ostringstream out, err;
  ASSERT_EQ(RunCli(static_cast<int>(argv.size()), argv.data(), out, err), 0)
      << err.str();
  EXPECT_EQ(err.str(), "");
  std::istringstream in(out.str());
  std::vector<std::string> types;
  std::string line;
  for (int i = 0; i < 4 && std::getline(in, line); ++i) {
    Json j = Json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.size() == 1 && j.contains("event")) << line;
    EXPECT_EQ(line, j.dump());  // compact
    types.push_back(j["event"]["type"].get<std::string>() + " " +
                    j["event"]["disk"].get<std::string>());
  }
  EXPECT_EQ(types, (std::vector<std::string>{"disk.start d0", "disk.done d0",
                                             "disk.start d1", "disk.done d1"}));
  std::string rest((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  Json result = Json::parse(rest, nullptr, false);
  ASSERT_TRUE(result.is_object()) << rest;
  EXPECT_EQ(result["vm"], "vm1");
  EXPECT_EQ(result["disks"].size(), 2u);

  argv = {"vcryptctl", "--socket", socket_.c_str(), "vm", "rekey", "vm1"};
  std::ostringstream hout, herr;
  ASSERT_EQ(RunCli(static_cast<int>(argv.size()), argv.data(), hout, herr), 0)
      << herr.str();
  EXPECT_EQ(herr.str(), "");
  EXPECT_EQ(hout.str().rfind("rekeyed VM 'vm1': KEK ", 0), 0u) << hout.str();
  EXPECT_EQ(testing::CountLines(hout.str()), 1) << hout.str();
}

// --- the terminal display ------------------------------------------------

constexpr uint64_t kMiB = 1 << 20;

TEST(ProgressRendererTest, ProgressLine) {
  EXPECT_EQ(ProgressRenderer::ProgressLine("vm1/disk0", 150 * kMiB, 300 * kMiB),
            "vm1/disk0  [##########----------]  50%  150/300 MiB");
  EXPECT_EQ(ProgressRenderer::ProgressLine("vm1/disk0", 0, 300 * kMiB),
            "vm1/disk0  [--------------------]   0%  0/300 MiB");
  // Floors: a disk one byte short of done is not 100%.
  EXPECT_EQ(ProgressRenderer::ProgressLine("v/d", 300 * kMiB - 1, 300 * kMiB),
            "v/d  [###################-]  99%  299/300 MiB");
  EXPECT_EQ(ProgressRenderer::ProgressLine("v/d", 300 * kMiB, 300 * kMiB),
            "v/d  [####################] 100%  300/300 MiB");
  // More done than the total (a confused sender) shows as complete.
  EXPECT_EQ(ProgressRenderer::ProgressLine("v/d", 400 * kMiB, 300 * kMiB),
            "v/d  [####################] 100%  300/300 MiB");
}

TEST(ProgressRendererTest, ZeroByteTotalIsComplete) {
  EXPECT_EQ(ProgressRenderer::ProgressLine("vm1/d0", 0, 0),
            "vm1/d0  [####################] 100%  0/0 MiB");
}

TEST(ProgressRendererTest, DeepDiskRedrawsOneLineThenEndsIt) {
  std::ostringstream out;
  ProgressRenderer p(out, 80);
  p.OnEvent(DiskEvent("disk.start", "vm1", "disk0", {{"deep", true}}));
  p.OnEvent(
      DiskEvent("disk.progress", "vm1", "disk0",
                {{"done_bytes", 150 * kMiB}, {"total_bytes", 300 * kMiB}}));
  p.OnEvent(DiskEvent("disk.done", "vm1", "disk0", {{"result", "rekeyed"}}));
  const std::string bar = "vm1/disk0  [##########----------]  50%  150/300 MiB";
  const std::string done = "vm1/disk0  rekeyed";
  EXPECT_EQ(out.str(), "vm1/disk0  rekeying\r" + bar + "\r" + done +
                           std::string(bar.size() - done.size(), ' ') + "\n");
  p.Finish();  // nothing open: nothing more
  EXPECT_EQ(out.str().back(), '\n');
  EXPECT_EQ(testing::CountLines(out.str()), 1);
}

TEST(ProgressRendererTest, DoneLines) {
  std::ostringstream out;
  ProgressRenderer p(out, 80);
  p.OnEvent(DiskEvent("disk.done", "v", "a", {{"result", "rekeyed"}}));
  p.OnEvent(DiskEvent("disk.done", "v", "b", {{"result", "already"}}));
  p.OnEvent(DiskEvent(
      "disk.done", "v", "c",
      {{"result", "failed"},
       {"error", {{"code", "not_found"}, {"exit", 5}, {"message", "gone"}}}}));
  EXPECT_EQ(out.str(),
            "v/a  rekeyed\nv/b  already rekeyed\nv/c  failed: gone\n");
}

TEST(ProgressRendererTest, OpenLinesAreCutToTheTerminalAndEndedByFinish) {
  std::ostringstream out;
  ProgressRenderer p(out, 30);
  p.OnEvent(DiskEvent("disk.progress", "vm1", "disk0",
                      {{"done_bytes", 0}, {"total_bytes", 300 * kMiB}}));
  const std::string cut =
      ProgressRenderer::ProgressLine("vm1/disk0", 0, 300 * kMiB).substr(0, 29);
  EXPECT_EQ(out.str(), cut);
  // Another disk's line leaves this one as it is.
  p.OnEvent(DiskEvent("disk.start", "vm1", "disk1"));
  p.Finish();
  EXPECT_EQ(out.str(), cut + "\nvm1/disk1  rekeying\n");
}

TEST(ProgressRendererTest, UnknownAndMalformedEventsAreIgnored) {
  std::ostringstream out;
  ProgressRenderer p(out, 80);
  p.OnEvent({{"type", "vm.something_new"}, {"vm", "v"}});
  p.OnEvent(Json::array());
  p.OnEvent("disk.done");
  p.Finish();
  EXPECT_EQ(out.str(), "");
}

}  // namespace
}  // namespace vcrypt
