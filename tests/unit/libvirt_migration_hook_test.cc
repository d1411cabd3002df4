// Live migration in libvirt/: the vcrypt metadata element of the domain
// XML (built, parsed back, round-tripped through a domain document, hostile
// entries refused) and what the qemu hook does for each operation libvirt
// runs on the two hosts of a migration (docs/hooks.rst, "QEMU guest
// migration"; the sequences below are the ones libvirt 9.0 ran in the
// two-host harness, tests/vm/pair_migration.sh). vcryptd is FakeVolumes
// (tests/unit/fake_volumes.h): these tests are about what the hook asks
// for, in which order, and what it tells libvirt; tests/unit/
// migration_test.cc runs the vcryptd side for real.
#include <gtest/gtest.h>
#include <libvirt/libvirt.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "libvirt/domain_xml.h"
#include "libvirt/hook.h"
#include "tests/unit/fake_volumes.h"

namespace vcrypt {
namespace {

using testing::FakeVolumes;
using Calls = std::vector<std::string>;

constexpr const char* kUuidData = "0b3e9a52-4c1d-4f0e-9a57-2f6b1d3c8e01";
constexpr const char* kUuidLogs = "7d2c4e18-9b0a-4e6f-8c31-5a9f0e2d4b72";

VolumeMeta Meta(const std::string& disk, const std::string& uuid,
                const std::string& image = "") {
  return VolumeMeta{"web01",
                    disk,
                    uuid,
                    "local",
                    "native",
                    "kek-1",
                    "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
                    image};
}

// A domain as libvirt hands it to the hook, with `metadata` (the element
// BuildVolumesMetadata makes, as virDomainGetXMLDesc shows it) and disks
// with the given cache mode.
std::string DomainWith(const std::string& metadata,
                       const std::string& cache = "none") {
  return "<domain type='qemu'><name>web01</name><metadata>" + metadata +
         "</metadata><devices>"
         "<disk type='file' device='disk'><source file='/img/os.qcow2'/>"
         "<target dev='vda'/></disk>"
         "<disk type='block' device='disk'><driver name='qemu' type='raw' "
         "cache='" +
         cache +
         "' io='native'/><source dev='/dev/mapper/vcrypt-web01-data'/>"
         "<target dev='vdb' bus='virtio'/></disk>"
         "<disk type='block' device='disk'><driver name='qemu' type='raw' "
         "cache='" +
         cache +
         "' io='native'/><source dev='/dev/mapper/vcrypt-web01-logs'/>"
         "<target dev='vdc' bus='virtio'/></disk>"
         "</devices></domain>";
}

// The metadata as libvirt shows it in a domain document: prefixed.
std::string Prefixed(const std::vector<VolumeMeta>& vols) {
  std::string x =
      "<vcrypt:volumes xmlns:vcrypt='" + std::string(kVcryptMetadataUri) + "'>";
  for (const auto& m : vols) {
    x += "<vcrypt:volume vm='" + m.vm + "' disk='" + m.disk + "' uuid='" +
         m.uuid + "' provider='" + m.provider + "' provider-type='" +
         m.provider_type + "' kek-id='" + m.kek_id + "'";
    if (!m.primary_key_id.empty())
      x += " primary-key-id='" + m.primary_key_id + "'";
    if (!m.image.empty()) x += " image='" + m.image + "'";
    x += "/>";
  }
  return x + "</vcrypt:volumes>";
}

const std::string kBoth =
    DomainWith(Prefixed({Meta("data", kUuidData), Meta("logs", kUuidLogs)}));

HookArgs Args(const std::string& op, const std::string& sub,
              const std::string& extra = "-") {
  auto a = ParseHookArgs({"web01", op, sub, extra});
  EXPECT_TRUE(a.ok());
  return *a;
}

TEST(VcryptMetadata, BuildParseRoundTrip) {
  std::vector<VolumeMeta> vols = {Meta("data", kUuidData),
                                  Meta("logs", kUuidLogs, "/var/lib/v/l.img")};
  vols[1].provider_type = "standard";
  vols[1].primary_key_id.clear();
  auto x = BuildVolumesMetadata(vols);
  ASSERT_TRUE(x.ok()) << x.error().message;
  EXPECT_NE(x->find(kVcryptMetadataUri), std::string::npos) << *x;
  auto back = ParseVolumesMetadata(*x);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, vols);
  // Inside a domain document, prefixed as libvirt writes it.
  auto dom = ParseDomainXml(DomainWith(Prefixed(vols)));
  ASSERT_TRUE(dom.ok()) << dom.error().message;
  EXPECT_EQ(dom->vcrypt_volumes, vols);
  EXPECT_EQ(dom->disks[1].cache, "none");
  // Other namespaces' metadata, and none at all, are fine.
  dom =
      ParseDomainXml(DomainWith("<x:app xmlns:x='urn:other'><x:volume/>"
                                "</x:app>"));
  ASSERT_TRUE(dom.ok());
  EXPECT_TRUE(dom->vcrypt_volumes.empty());
  EXPECT_TRUE(ParseVolumesMetadata("")->empty());
}

TEST(VcryptMetadata, HostileEntriesAreRefused) {
  auto refused = [](VolumeMeta m) {
    auto dom = ParseDomainXml(DomainWith(Prefixed({m})));
    EXPECT_FALSE(dom.ok()) << m.vm << "/" << m.disk;
    if (!dom.ok()) {
      EXPECT_EQ(dom.error().code, ErrorCode::kInvalidArgument);
      EXPECT_EQ(dom.error().message.find('\n'), std::string::npos);
    }
    EXPECT_FALSE(BuildVolumesMetadata({m}).ok());
  };
  VolumeMeta m = Meta("data", kUuidData);
  m.vm = "../etc";
  refused(m);
  m = Meta("data", "not-a-uuid");
  refused(m);
  m = Meta("data", kUuidData, "relative/x.img");
  refused(m);
  m = Meta("data", kUuidData, "/var/../etc/shadow");
  refused(m);
  m = Meta("data", kUuidData);
  m.provider_type = "plugin";
  refused(m);
  m = Meta("data", kUuidData);
  m.kek_id = "has space";
  refused(m);
  m = Meta("data", kUuidData);
  m.kek_id = std::string(200, 'k');
  refused(m);
  m = Meta("data", kUuidData);
  m.provider = "../p";
  refused(m);
  // The same volume twice, and more than the bound.
  EXPECT_FALSE(ParseDomainXml(DomainWith(Prefixed({Meta("data", kUuidData),
                                                   Meta("data", kUuidLogs)})))
                   .ok());
  std::vector<VolumeMeta> many;
  for (size_t i = 0; i <= kMaxMetadataVolumes; ++i)
    many.push_back(Meta("d" + std::to_string(i), kUuidData));
  auto dom = ParseDomainXml(DomainWith(Prefixed(many)));
  ASSERT_FALSE(dom.ok());
  EXPECT_NE(dom.error().message.find("more than 64 volumes"),
            std::string::npos);
  EXPECT_FALSE(BuildVolumesMetadata(many).ok());
}

// Destination, `migrate begin`: every vcrypt disk checked through
// vm.incoming (no register), nothing opened, nothing on stdout (the
// outcome carries no XML: libvirt keeps its own).
TEST(MigrationHook, MigrateBeginChecksEveryVolumeOfTheDomain) {
  FakeVolumes v;
  HookOutcome o = RunHook(Args("migrate", "begin"), kBoth, v);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_TRUE(o.messages.empty());
  EXPECT_EQ(v.calls, (Calls{"check web01/data web01/logs"}));
  // restore begin: the same check.
  FakeVolumes r;
  o = RunHook(Args("restore", "begin"), kBoth, r);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(r.calls, (Calls{"check web01/data web01/logs"}));
}

// A check that fails refuses the migration with vcryptd's reason in one
// line, and its exit code.
TEST(MigrationHook, MigrateBeginRefusalIsOneLine) {
  FakeVolumes v;
  v.incoming_errors["web01"] = MakeError(
      ErrorCode::kKeyUnavailable,
      "web01/data: native provider 'local' with primary key 6a1f0c2e-... is "
      "not configured on this host; restore its backup here");
  HookOutcome o = RunHook(Args("migrate", "begin"), kBoth, v);
  EXPECT_EQ(o.exit_code, static_cast<int>(ErrorCode::kKeyUnavailable));
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0],
            "vcrypt: cannot take domain web01: web01/data: native provider "
            "'local' with primary key 6a1f0c2e-... is not configured on this "
            "host; restore its backup here");
}

// Shared storage used by two hosts at once needs O_DIRECT: any other
// cache mode refuses a live migration (before vcryptd is asked), not a
// restore.
TEST(MigrationHook, MigrateBeginRefusesACachedDisk) {
  const std::string xml =
      DomainWith(Prefixed({Meta("data", kUuidData), Meta("logs", kUuidLogs)}),
                 "writeback");
  FakeVolumes v;
  HookOutcome o = RunHook(Args("migrate", "begin"), xml, v);
  EXPECT_EQ(o.exit_code, static_cast<int>(ErrorCode::kInvalidArgument));
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0],
            "vcrypt: cannot take domain web01: web01/data: its disk uses "
            "cache='writeback'; a live migration needs cache='none' on "
            "shared storage (docs/cluster.md)");
  EXPECT_TRUE(v.calls.empty());
  FakeVolumes d;
  EXPECT_EQ(RunHook(Args("migrate", "begin"),
                    DomainWith(Prefixed({Meta("data", kUuidData),
                                         Meta("logs", kUuidLogs)}),
                               "directsync"),
                    d)
                .exit_code,
            0);
  FakeVolumes r;
  EXPECT_EQ(RunHook(Args("restore", "begin"), xml, r).exit_code, 0);
}

// A disk attached before vcrypt wrote metadata: fine where vcryptd knows
// it, refused (one line, why and what to do) where it does not.
TEST(MigrationHook, DiskWithoutMetadataNeedsAHostThatKnowsIt) {
  const std::string xml = DomainWith(Prefixed({Meta("data", kUuidData)}));
  FakeVolumes v;
  HookOutcome o = RunHook(Args("migrate", "begin"), xml, v);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(v.calls, (Calls{"known web01/logs", "check web01/data"}));
  FakeVolumes u;
  u.unknown = true;
  o = RunHook(Args("migrate", "begin"), xml, u);
  EXPECT_EQ(o.exit_code, static_cast<int>(ErrorCode::kNotFound));
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0].rfind(
                "vcrypt: cannot take domain web01: web01/logs: the domain XML "
                "has no vcrypt metadata for it and this host does not know it",
                0),
            0u)
      << o.messages[0];
  EXPECT_EQ(u.calls, (Calls{"known web01/logs"}));
}

// Destination, `prepare begin`: the VM recorded here from its headers,
// then every disk opened; a failed register opens nothing.
TEST(MigrationHook, PrepareRegistersThenOpens) {
  FakeVolumes v;
  HookOutcome o = RunHook(Args("prepare", "begin"), kBoth, v);
  EXPECT_EQ(o.exit_code, 0) << (o.messages.empty() ? "" : o.messages[0]);
  EXPECT_EQ(v.calls, (Calls{"register web01/data web01/logs", "open web01/data",
                            "open web01/logs"}));
  FakeVolumes f;
  f.incoming_errors["web01"] =
      MakeError(ErrorCode::kKeyUnavailable, "web01/data: KMS unreachable");
  o = RunHook(Args("prepare", "begin"), kBoth, f);
  EXPECT_EQ(o.exit_code, static_cast<int>(ErrorCode::kKeyUnavailable));
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0],
            "vcrypt: cannot take domain web01: web01/data: KMS unreachable");
  EXPECT_EQ(f.calls, (Calls{"register web01/data web01/logs"}));
}

// Source, `release end migrated` (libvirt >= 10.5 says why): volumes
// closed, then vm.depart. Any other reason: closed only.
TEST(MigrationHook, ReleaseAfterMigrationDeparts) {
  FakeVolumes v;
  HookOutcome o = RunHook(Args("release", "end", "migrated"), kBoth, v);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_TRUE(o.watch_vms.empty());
  EXPECT_EQ(v.calls, (Calls{"close web01/data", "close web01/logs",
                            "depart web01 migrated"}));
  for (const char* reason :
       {"shutdown", "destroyed", "crashed", "saved", "failed", "unknown"}) {
    FakeVolumes w;
    o = RunHook(Args("release", "end", reason), kBoth, w);
    EXPECT_EQ(o.exit_code, 0);
    EXPECT_TRUE(o.watch_vms.empty()) << reason;
    EXPECT_EQ(w.calls, (Calls{"close web01/data", "close web01/logs"}))
        << reason;
  }
  // vcryptd not knowing the VM is no failure; anything else is a line,
  // not an exit code (the migration is over; libvirt only logs it).
  FakeVolumes e;
  e.depart_errors["web01"] = MakeError(ErrorCode::kNotFound, "no VM");
  o = RunHook(Args("release", "end", "migrated"), kBoth, e);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_TRUE(o.messages.empty());
  e.depart_errors["web01"] = MakeError(ErrorCode::kIo, "disk full");
  o = RunHook(Args("release", "end", "migrated"), kBoth, e);
  EXPECT_EQ(o.exit_code, 0);
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0],
            "vcrypt: VM web01 of domain web01 migrated away, but: disk full");
}

// libvirt 9.0 (Debian 12) passes "-": the hook closes and names the VMs
// for the watcher, which asks libvirt once it is done with the domain.
TEST(MigrationHook, ReleaseWithoutReasonLeavesItToTheWatcher) {
  FakeVolumes v;
  HookOutcome o = RunHook(Args("release", "end", "-"), kBoth, v);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.watch_vms, (std::vector<std::string>{"web01"}));
  EXPECT_EQ(v.calls, (Calls{"close web01/data", "close web01/logs"}));
}

TEST(MigrationHook, WatcherDepartsOnlyWhenLibvirtSaysMigrated) {
  using State = std::optional<DomainStateNow>;
  auto run = [](std::vector<State> states, FakeVolumes& v) {
    size_t i = 0;
    auto next = [&]() -> Result<State> {
      State s = states[std::min(i, states.size() - 1)];
      ++i;
      return s;
    };
    return RunReleaseWatch("web01", {"web01"}, next, v,
                           std::chrono::milliseconds(1000));
  };
  // Still running for a moment, then shut off: migrated.
  FakeVolumes a;
  auto log =
      run({DomainStateNow{VIR_DOMAIN_RUNNING, 0},
           DomainStateNow{VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_MIGRATED}},
          a);
  EXPECT_EQ(a.calls, (Calls{"depart web01 migrated"}));
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("migrated away"), std::string::npos);
  // Shut down, destroyed, saved: stays here.
  for (int reason : {VIR_DOMAIN_SHUTOFF_SHUTDOWN, VIR_DOMAIN_SHUTOFF_DESTROYED,
                     VIR_DOMAIN_SHUTOFF_SAVED, VIR_DOMAIN_SHUTOFF_FAILED}) {
    FakeVolumes b;
    run({DomainStateNow{VIR_DOMAIN_SHUTOFF, reason}}, b);
    EXPECT_TRUE(b.calls.empty()) << reason;
  }
  // Gone (transient): nothing can be said.
  FakeVolumes c;
  run({std::nullopt}, c);
  EXPECT_TRUE(c.calls.empty());
  // Running again (started here right after): not migrated, after the
  // timeout.
  FakeVolumes d;
  log = run({DomainStateNow{VIR_DOMAIN_RUNNING, 0}}, d);
  EXPECT_TRUE(d.calls.empty());
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("still active"), std::string::npos);
  // A volume still open here: the KEK stays, and the log says so.
  FakeVolumes e;
  e.still_open.insert("web01");
  log =
      run({DomainStateNow{VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_MIGRATED}}, e);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("still open here"), std::string::npos);
}

// A failed migration, as libvirt runs it: the destination's hook refuses
// at migrate begin; the source's hook is not called at all, so the source
// stays exactly as it was. Nothing was opened on the destination.
TEST(MigrationHook, FailedMigrationSequence) {
  FakeVolumes dest;
  dest.incoming_errors["web01"] =
      MakeError(ErrorCode::kKeyUnavailable, "web01/data: no provider");
  HookOutcome o = RunHook(Args("migrate", "begin"), kBoth, dest);
  ASSERT_NE(o.exit_code, 0);
  // libvirt stops there: no prepare, no release on the destination.
  EXPECT_EQ(dest.calls, (Calls{"check web01/data web01/logs"}));
}

// --- libvirt's own sequences ------------------------------------------------
// tests/unit/testdata/libvirt_hooks/: what libvirtd 9.0 passed to its qemu
// hook on each host of a real migration (recorded by tests/vm/pair_smoke.sh;
// format in the directory's README.md). The recorded domain has a plain
// disk; each call is replayed with the argument list libvirt used and the
// vcrypt domain above, and the recorded XML is parsed as it came.
struct RecordedCall {
  std::vector<std::string> argv;  // DOMAIN OP SUBOP EXTRA
  std::string xml;                // "" unless recorded whole
};

std::vector<RecordedCall> ReadRecorded(const std::string& name) {
  std::ifstream in(std::string(VCRYPT_SOURCE_DIR) +
                   "/tests/unit/testdata/libvirt_hooks/" + name);
  EXPECT_TRUE(in.good()) << name;
  std::vector<RecordedCall> calls;
  std::string line;
  bool in_xml = false, full = false;
  while (std::getline(in, line)) {
    if (in_xml) {
      if (line == "end") {
        in_xml = false;
      } else if (full) {
        calls.back().xml += line + "\n";
      }
      continue;
    }
    if (line.rfind("argv ", 0) == 0) {
      RecordedCall c;
      std::istringstream words(line.substr(5));
      for (std::string w; words >> w;) c.argv.push_back(w);
      calls.push_back(std::move(c));
    } else if (line.rfind("stdin ", 0) == 0) {
      in_xml = true;
      full = line.size() >= 5 && line.substr(line.size() - 5) == " full";
    }
  }
  return calls;
}

// Replays `file` on one host: each call with its recorded argument list
// (the domain renamed to web01) and kBoth on stdin.
std::vector<HookOutcome> Replay(const std::string& file, FakeVolumes& v) {
  std::vector<HookOutcome> out;
  for (const auto& c : ReadRecorded(file)) {
    EXPECT_EQ(c.argv.size(), 4u);
    if (c.argv.size() != 4) continue;
    auto args = ParseHookArgs({"web01", c.argv[1], c.argv[2], c.argv[3]});
    EXPECT_TRUE(args.ok());
    out.push_back(RunHook(*args, kBoth, v));
  }
  return out;
}

TEST(RecordedMigration, DestinationChecksRegistersAndOpens) {
  for (const char* file : {"migrate_ok_dest.txt", "migrate_back_dest.txt"}) {
    FakeVolumes v;
    auto outcomes = Replay(file, v);
    ASSERT_EQ(outcomes.size(), 4u) << file;  // migrate, prepare, start, started
    for (const auto& o : outcomes) EXPECT_EQ(o.exit_code, 0) << file;
    EXPECT_EQ(v.calls, (Calls{"check web01/data web01/logs",
                              "register web01/data web01/logs",
                              "open web01/data", "open web01/logs"}))
        << file;
  }
  // The XML libvirt really sent at migrate begin parses, disks and all.
  auto calls = ReadRecorded("migrate_ok_dest.txt");
  ASSERT_FALSE(calls.empty());
  ASSERT_EQ(calls[0].argv[1], "migrate");
  ASSERT_FALSE(calls[0].xml.empty());
  auto dom = ParseDomainXml(calls[0].xml);
  ASSERT_TRUE(dom.ok()) << dom.error().message;
  EXPECT_EQ(dom->name, calls[0].argv[0]);
  ASSERT_EQ(dom->disks.size(), 1u);
  EXPECT_EQ(dom->disks[0].cache, "none");
}

TEST(RecordedMigration, SourceClosesAndLeavesTheVerdictToTheWatcher) {
  for (const char* file :
       {"migrate_ok_source.txt", "migrate_back_source.txt"}) {
    FakeVolumes v;
    auto outcomes = Replay(file, v);
    ASSERT_EQ(outcomes.size(), 2u) << file;  // stopped end, release end
    EXPECT_EQ(v.calls, (Calls{"close web01/data", "close web01/logs"}))
        << file;
    // libvirt 9.0 says "-": the watcher decides.
    EXPECT_EQ(outcomes[1].watch_vms, (std::vector<std::string>{"web01"}));
  }
}

TEST(RecordedMigration, RefusedMigrationTouchesNothing) {
  FakeVolumes dest;
  dest.incoming_errors["web01"] =
      MakeError(ErrorCode::kKeyUnavailable, "web01/data: no provider");
  auto outcomes = Replay("migrate_refused_dest.txt", dest);
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[0].exit_code,
            static_cast<int>(ErrorCode::kKeyUnavailable));
  EXPECT_EQ(dest.calls, (Calls{"check web01/data web01/logs"}));
  FakeVolumes source;
  EXPECT_TRUE(Replay("migrate_refused_source.txt", source).empty());
  EXPECT_TRUE(source.calls.empty());
}

}  // namespace
}  // namespace vcrypt
