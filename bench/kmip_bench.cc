// Benchmark of KEK fetches from a KMS through the standard key provider
// (issue: "KEK fetch over one TLS session vs a new connection per fetch;
// fetch of 50 distinct KEKs batched vs one by one: messages sent and time,
// as ratios in the same run").
//
// Run by bench/kmip_bench.sh, which makes a test PKI and starts a
// pykmip-server on loopback. Against a KMS at --server, with the client
// identity in --certs (ca.pem, client.pem, client-key.pem), it creates
// --keks KEKs, then measures in the same run, rounds interleaved so that
// drift hits both sides alike (medians over --rounds):
//  (a) --keks sequential single-KEK fetches over one reused TLS session vs
//      the same fetches each on a new connection (fresh TlsClient and
//      KmsCluster per fetch: config load, TCP + TLS handshake,
//      DiscoverVersions, Get);
//  (b) --keks distinct KEKs on a connected provider: GetKeks (batched Gets)
//      vs GetKek one by one, plus GetKek from that many threads at once
//      (coalesced, the boot-storm path);
// and prints KMIP messages sent, TLS connections made and wall time of each,
// and the ratios. Every fetched KEK is compared with the one CreateKek
// returned; any mismatch or failure makes the exit status 1.
//
// Usage: vcrypt_kmip_bench --server HOST:PORT --certs DIR [--work DIR]
//                          [--keks N] [--rounds R]
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/handles.h"
#include "keyproviders/standard/kmip.h"
#include "keyproviders/standard/standard_provider.h"
#include "keyproviders/standard/tls_client.h"

namespace vcrypt {
namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string server;
  std::string certs;
  std::string work;
  size_t keks = 50;
  int rounds = 5;
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "vcrypt_kmip_bench: %s\n", what.c_str());
  std::exit(1);
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) Die("missing value for " + flag);
    const std::string value = argv[++i];
    if (flag == "--server") {
      a.server = value;
    } else if (flag == "--certs") {
      a.certs = value;
    } else if (flag == "--work") {
      a.work = value;
    } else if (flag == "--keks") {
      a.keks = std::stoul(value);
    } else if (flag == "--rounds") {
      a.rounds = std::stoi(value);
    } else {
      Die("unknown flag " + flag);
    }
  }
  if (a.server.empty() || a.certs.empty()) {
    Die("usage: vcrypt_kmip_bench --server HOST:PORT --certs DIR "
        "[--work DIR] [--keks N] [--rounds R]");
  }
  if (a.keks == 0 || a.rounds < 1) Die("--keks and --rounds must be >= 1");
  return a;
}

// The client's private key, read straight into locked memory.
SecureBuffer ReadSecret(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st;
  if (!fd.valid() || ::fstat(fd.get(), &st) != 0) Die("cannot read " + path);
  SecureBuffer out(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + got, out.size() - got);
    if (n <= 0) Die("cannot read " + path);
    got += static_cast<size_t>(n);
  }
  return out;
}

template <typename T>
T Check(Result<T> r, const char* what) {
  if (!r.ok()) Die(std::string(what) + ": " + r.error().message);
  return std::move(r).value();
}

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// What one measured run cost.
struct Cost {
  double ms = 0;
  uint64_t messages = 0;
  uint64_t connections = 0;
};

// Medians over the rounds. Counts are the same in every round except for
// the concurrent case, where how many calls share a message depends on
// timing.
struct Series {
  std::vector<Cost> runs;
  double ms() const { return Median(Project(&Cost::ms)); }
  uint64_t messages() const { return MedianCount(&Cost::messages); }
  uint64_t connections() const { return MedianCount(&Cost::connections); }

 private:
  template <typename T>
  std::vector<double> Project(T Cost::*field) const {
    std::vector<double> v;
    for (const auto& c : runs) v.push_back(static_cast<double>(c.*field));
    return v;
  }
  uint64_t MedianCount(uint64_t Cost::*field) const {
    return static_cast<uint64_t>(Median(Project(field)) + 0.5);
  }
};

class Bench {
 public:
  explicit Bench(Args args) : args_(std::move(args)) {}
  ~Bench() {
    provider_.reset();
    if (!cleanup_work_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(cleanup_work_, ec);
    }
  }

  int Run() {
    Setup();
    RunSessionReuse();
    RunBatching();
    return failures_ == 0 ? 0 : 1;
  }

 private:
  TlsConfig ClientConfig() const {
    TlsConfig c;
    c.ca_file = provider_dir_ + "/ca.pem";
    c.cert_file = provider_dir_ + "/cert.pem";
    c.key_file = provider_dir_ + "/key.pem";
    c.connect_timeout = std::chrono::milliseconds(5000);
    c.io_timeout = std::chrono::milliseconds(10000);
    return c;
  }

  void Setup() {
    servers_ = Check(ParseKmsServers(args_.server), "--server");
    std::string work = args_.work;
    if (work.empty()) {
      char t[] = "/tmp/vcrypt-kmip-bench-XXXXXX";
      if (::mkdtemp(t) == nullptr) Die("mkdtemp failed");
      work = t;
      cleanup_work_ = work;
    }
    provider_dir_ = work + "/provider";
    std::string ca = Check(ReadFile(args_.certs + "/ca.pem"), "ca.pem");
    std::string cert =
        Check(ReadFile(args_.certs + "/client.pem"), "client.pem");
    SecureBuffer key = ReadSecret(args_.certs + "/client-key.pem");
    provider_ = Check(StandardProvider::Create("bench", provider_dir_, servers_,
                                               ca, cert, key),
                      "provider create");

    auto t0 = Clock::now();
    for (size_t i = 0; i < args_.keks; ++i) {
      NewKek nk = Check(provider_->CreateKek("bench-vm-" + std::to_string(i)),
                        "CreateKek");
      refs_.push_back(std::move(nk.ref));
      keks_.push_back(std::move(nk.kek));
    }
    std::printf(
        "KMIP benchmark: pykmip-server at %s (loopback, TLS 1.2), %zu KEKs, "
        "median of %d rounds\n"
        "setup: created %zu KEKs in %.0f ms (%llu KMIP messages)\n\n",
        args_.server.c_str(), args_.keks, args_.rounds, args_.keks,
        Ms(Clock::now() - t0),
        static_cast<unsigned long long>(provider_->cluster().messages_sent()));
  }

  void Verify(const Result<SecureBuffer>& got, size_t i, const char* mode) {
    if (!got.ok()) {
      std::fprintf(stderr, "%s: KEK %zu: %s\n", mode, i,
                   got.error().message.c_str());
      ++failures_;
    } else if (!got->Equals(keks_[i])) {
      std::fprintf(stderr, "%s: KEK %zu: wrong bytes\n", mode, i);
      ++failures_;
    }
  }

  // One single-item Get through `cluster`.
  Result<SecureBuffer> FetchOne(KmsCluster& cluster, size_t i) {
    kmip::RequestItem get = kmip::MakeGet(refs_[i].kek_id);
    auto ex = cluster.Execute({&get, 1});
    if (!ex.ok()) return std::move(ex).error();
    return kmip::ParseGetAes256((*ex)->matched[0], refs_[i].kek_id);
  }

  // (a) All fetches over one session: a fresh cluster, so its one connect
  // and DiscoverVersions are counted, as a daemon pays them once.
  Cost ReusedSession() {
    auto t0 = Clock::now();
    KmsCluster cluster(Check(TlsClient::Create(ClientConfig()), "TLS config"),
                       servers_);
    for (size_t i = 0; i < refs_.size(); ++i) {
      Verify(FetchOne(cluster, i), i, "reused session");
    }
    return {Ms(Clock::now() - t0), cluster.messages_sent(),
            cluster.connections_made()};
  }

  // (a) Every fetch pays for everything: TLS config load, TCP + TLS
  // handshake, DiscoverVersions, Get.
  Cost ConnectionPerFetch() {
    Cost c;
    auto t0 = Clock::now();
    for (size_t i = 0; i < refs_.size(); ++i) {
      KmsCluster cluster(Check(TlsClient::Create(ClientConfig()), "TLS config"),
                         servers_);
      Verify(FetchOne(cluster, i), i, "connection per fetch");
      c.messages += cluster.messages_sent();
      c.connections += cluster.connections_made();
    }
    c.ms = Ms(Clock::now() - t0);
    return c;
  }

  void RunSessionReuse() {
    Series reused, fresh;
    for (int r = 0; r < args_.rounds; ++r) {
      reused.runs.push_back(ReusedSession());
      fresh.runs.push_back(ConnectionPerFetch());
    }
    const double n = static_cast<double>(refs_.size());
    std::printf("(a) %zu sequential KEK fetches (one Get each)\n",
                refs_.size());
    PrintHeader();
    PrintRow("one reused TLS session", reused, n);
    PrintRow("new connection per fetch", fresh, n);
    std::printf(
        "    ratio new-connection / reused: messages %.2fx, connections "
        "%.0fx, time %.2fx\n\n",
        Ratio(fresh.messages(), reused.messages()),
        Ratio(fresh.connections(), reused.connections()),
        fresh.ms() / reused.ms());
  }

  // (b) On a provider that is already connected (warmed by one fetch), so
  // only the batching differs.
  std::unique_ptr<StandardProvider> ConnectedProvider() {
    auto p = Check(StandardProvider::Load("bench", provider_dir_), "load");
    Verify(p->GetKek(refs_[0]), 0, "warm-up");
    return p;
  }

  Cost Batched() {
    auto p = ConnectedProvider();
    const uint64_t m0 = p->cluster().messages_sent();
    auto t0 = Clock::now();
    auto got = p->GetKeks(refs_);
    Cost c{Ms(Clock::now() - t0), p->cluster().messages_sent() - m0,
           p->cluster().connections_made()};
    for (size_t i = 0; i < got.size(); ++i) Verify(got[i], i, "GetKeks");
    return c;
  }

  Cost OneByOne() {
    auto p = ConnectedProvider();
    const uint64_t m0 = p->cluster().messages_sent();
    auto t0 = Clock::now();
    for (size_t i = 0; i < refs_.size(); ++i) {
      Verify(p->GetKek(refs_[i]), i, "GetKek");
    }
    return {Ms(Clock::now() - t0), p->cluster().messages_sent() - m0,
            p->cluster().connections_made()};
  }

  Cost Concurrent() {
    auto p = ConnectedProvider();
    const uint64_t m0 = p->cluster().messages_sent();
    std::vector<std::optional<Result<SecureBuffer>>> got(refs_.size());
    std::latch start(static_cast<std::ptrdiff_t>(refs_.size()));
    std::vector<std::thread> threads;
    // Threads are created before the clock starts; the latch releases them
    // together.
    for (size_t i = 0; i < refs_.size(); ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        got[i] = p->GetKek(refs_[i]);
      });
    }
    auto t0 = Clock::now();
    for (auto& t : threads) t.join();
    Cost c{Ms(Clock::now() - t0), p->cluster().messages_sent() - m0,
           p->cluster().connections_made()};
    for (size_t i = 0; i < got.size(); ++i) Verify(*got[i], i, "concurrent");
    return c;
  }

  void RunBatching() {
    Series batched, single, concurrent;
    for (int r = 0; r < args_.rounds; ++r) {
      batched.runs.push_back(Batched());
      single.runs.push_back(OneByOne());
      concurrent.runs.push_back(Concurrent());
    }
    const double n = static_cast<double>(refs_.size());
    std::printf("(b) %zu distinct KEKs on a connected provider\n",
                refs_.size());
    PrintHeader();
    PrintRow("GetKeks (batched Gets)", batched, n);
    PrintRow("GetKek one by one", single, n);
    PrintRow("GetKek from N threads", concurrent, n);
    std::printf(
        "    ratio one-by-one / batched: messages %.2fx, time %.2fx\n"
        "    ratio one-by-one / N threads (coalesced): messages %.2fx, "
        "time %.2fx\n",
        Ratio(single.messages(), batched.messages()),
        single.ms() / batched.ms(),
        Ratio(single.messages(), concurrent.messages()),
        single.ms() / concurrent.ms());
    if (failures_ != 0)
      std::printf("\nFAILED: %d wrong or missing KEKs\n", failures_);
  }

  static double Ratio(uint64_t a, uint64_t b) {
    return b == 0 ? 0 : static_cast<double>(a) / static_cast<double>(b);
  }
  static void PrintHeader() {
    std::printf("    %-26s %9s %12s %10s %10s\n", "mode", "messages",
                "connections", "wall ms", "ms/KEK");
  }
  static void PrintRow(const char* mode, const Series& s, double n) {
    std::printf("    %-26s %9llu %12llu %10.1f %10.2f\n", mode,
                static_cast<unsigned long long>(s.messages()),
                static_cast<unsigned long long>(s.connections()), s.ms(),
                s.ms() / n);
  }

  Args args_;
  std::vector<KmsServer> servers_;
  std::string provider_dir_;
  std::string cleanup_work_;
  std::unique_ptr<StandardProvider> provider_;
  std::vector<KekRef> refs_;
  std::vector<SecureBuffer> keks_;
  int failures_ = 0;
};

}  // namespace
}  // namespace vcrypt

int main(int argc, char** argv) {
  vcrypt::Bench bench(vcrypt::ParseArgs(argc, argv));
  return bench.Run();
}
