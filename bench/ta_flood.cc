// Benchmark of the Trust Authority under a nonce flood (issue 13, section
// 5: "attestation latency of a real host while 500 req/s hit /v1/nonce —
// at most 2x the idle latency").
//
// Run by bench/ta_flood.sh, which starts a software TPM (swtpm) and the
// Trust Authority's services (`vcrypt-ta`, TLS on loopback) with this host
// registered. Against them it creates a TrustedProvider and one KEK, then
// measures a real host's fresh attestation (GetKek with the cached token
// made stale: POST /v1/nonce, TPM2_Quote, POST /v1/attest, POST
// /v1/kek/unwrap) in blocks that alternate
//   idle   nothing else talks to the services;
//   flood  --rate requests per second POST /v1/nonce with this host's name
//          (the name is not a secret), from --sources loopback addresses
//          127.0.0.2... so that the per-client rate limit sees --sources
//          clients; the host itself talks from 127.0.0.1.
// The flood is open-loop: requests are sent on a fixed schedule whatever
// the answers are, over TLS connections that are reused while the server
// keeps them (keep-alive) and opened again when it does not.
//
// It prints the median latency of each kind, their ratio, and what the
// flood got: requests sent per second and the answers by HTTP status. Any
// attestation that fails or returns another KEK makes the exit status 1:
// a flood that locks the host out is a failure, not a slow figure.
//
// Usage: vcrypt_ta_flood --attestation URL --kps URL --ca FILE --tcti T
//                        --host NAME --work DIR [--rounds R (8)]
//                        [--blocks B (3)] [--rate N (500)]
//                        [--sources S (10)] [--ramp SECONDS (1)]
//
// --ramp is how long each flood runs before its attestations: the default
// lets it reach its rate; 30 shows a sustained flood (60 s nonce lifetime,
// 10,000 outstanding nonces at most, i.e. full after 20 s at 500/s).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "clocked_provider.h"  // bench/, next to this file
#include "keyproviders/trusted/trusted_provider.h"

namespace vcrypt {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "vcrypt_ta_flood: %s\n", what.c_str());
  std::exit(1);
}

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// "https://127.0.0.1:PORT" -> PORT.
int PortOf(const std::string& url) {
  auto colon = url.rfind(':');
  if (url.rfind("https://127.0.0.1:", 0) != 0 || colon == std::string::npos)
    Die("the attestation URL must be https://127.0.0.1:PORT: " + url);
  return std::atoi(url.c_str() + colon + 1);
}

// One TLS connection to 127.0.0.1:port from a chosen loopback address.
// Owns the socket and the SSL object.
class Conn {
 public:
  Conn(SSL_CTX* ctx, const std::string& source, int port) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    timeval tv{2, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in src{}, dst{};
    src.sin_family = dst.sin_family = AF_INET;
    inet_pton(AF_INET, source.c_str(), &src.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    dst.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
        connect(fd_, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0)
      return;
    ssl_ = SSL_new(ctx);
    if (!ssl_) return;
    SSL_set_fd(ssl_, fd_);
    SSL_set_tlsext_host_name(ssl_, "127.0.0.1");
    ok_ = SSL_connect(ssl_) == 1;
  }
  ~Conn() {
    if (ssl_) SSL_free(ssl_);
    if (fd_ >= 0) close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  bool ok() const { return ok_; }

  // Sends one request and reads its answer; returns the HTTP status, or 0
  // when the connection failed (then it must not be used again). Sets
  // `keep` to whether the server keeps the connection open.
  int Exchange(const std::string& request, bool& keep) {
    keep = false;
    if (!ok_) return 0;
    if (SSL_write(ssl_, request.data(), static_cast<int>(request.size())) <= 0)
      return ok_ = false, 0;
    std::string in;
    char buf[4096];
    size_t header_end = std::string::npos, need = 0;
    while (true) {
      int n = SSL_read(ssl_, buf, sizeof buf);
      if (n <= 0) return ok_ = false, 0;
      in.append(buf, static_cast<size_t>(n));
      if (header_end == std::string::npos) {
        header_end = in.find("\r\n\r\n");
        if (header_end == std::string::npos) continue;
        std::string head = in.substr(0, header_end);
        for (auto& c : head) c = static_cast<char>(std::tolower(c));
        auto cl = head.find("content-length:");
        need = header_end + 4 +
               (cl == std::string::npos
                    ? 0
                    : std::strtoul(head.c_str() + cl + 15, nullptr, 10));
        keep = head.find("connection: close") == std::string::npos;
      }
      if (in.size() >= need) break;
    }
    if (in.size() < 12) return ok_ = false, 0;
    return std::atoi(in.c_str() + 9);
  }

 private:
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  bool ok_ = false;
};

// The flood: `rate` requests per second, slot i sent at start + i/rate by
// one of the worker threads, each bound to one source address.
class Flood {
 public:
  Flood(SSL_CTX* ctx, int port, const std::string& host, int rate, int sources)
      : ctx_(ctx), port_(port), rate_(rate) {
    std::string body = "{\"host\":\"" + host + "\"}";
    request_ =
        "POST /v1/nonce HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    for (int s = 0; s < sources; ++s)
      sources_.push_back("127.0.0." + std::to_string(2 + s));
  }

  void Start() {
    stop_ = false;
    next_slot_ = 0;
    start_ = Clock::now();
    // Enough workers that slow answers do not hold the schedule back: two
    // per source, at least 16.
    int workers = std::max<int>(16, 2 * static_cast<int>(sources_.size()));
    for (int w = 0; w < workers; ++w)
      threads_.emplace_back([this, w] { Work(sources_[w % sources_.size()]); });
  }

  // Stops the workers; returns the seconds the flood ran.
  double Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
    return std::chrono::duration<double>(Clock::now() - start_).count();
  }

  uint64_t sent() const { return sent_; }
  std::map<int, uint64_t> statuses() {
    std::lock_guard lock(mu_);
    return statuses_;
  }

 private:
  void Work(const std::string& source) {
    std::unique_ptr<Conn> conn;
    while (!stop_) {
      uint64_t slot = next_slot_++;
      auto when = start_ + std::chrono::microseconds(slot * 1000000 / rate_);
      std::this_thread::sleep_until(when);
      if (stop_) break;
      if (!conn || !conn->ok())
        conn = std::make_unique<Conn>(ctx_, source, port_);
      bool keep = false;
      int status = conn->Exchange(request_, keep);
      if (!keep) conn.reset();
      ++sent_;
      std::lock_guard lock(mu_);
      ++statuses_[status];
    }
  }

  SSL_CTX* ctx_;
  int port_;
  int rate_;
  std::string request_;
  std::vector<std::string> sources_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> next_slot_{0}, sent_{0};
  Clock::time_point start_;
  std::mutex mu_;
  std::map<int, uint64_t> statuses_;
};

int Main(int argc, char** argv) {
  TrustedProviderConfig cfg;
  std::string work, ca_file;
  int rounds = 8, blocks = 3, rate = 500, sources = 10, ramp = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--attestation")
      cfg.attestation_url = v;
    else if (k == "--kps")
      cfg.kps_url = v;
    else if (k == "--ca") {
      ca_file = v;
      std::ifstream f(v);
      std::stringstream ss;
      ss << f.rdbuf();
      cfg.ca_pem = ss.str();
    } else if (k == "--tcti")
      cfg.tcti = v;
    else if (k == "--host")
      cfg.host = v;
    else if (k == "--work")
      work = v;
    else if (k == "--rounds")
      rounds = std::atoi(v.c_str());
    else if (k == "--blocks")
      blocks = std::atoi(v.c_str());
    else if (k == "--rate")
      rate = std::atoi(v.c_str());
    else if (k == "--sources")
      sources = std::atoi(v.c_str());
    else if (k == "--ramp")
      ramp = std::atoi(v.c_str());
    else
      Die("unknown option " + k);
  }
  if (cfg.attestation_url.empty() || cfg.kps_url.empty() ||
      cfg.ca_pem.empty() || work.empty() || rounds < 1 || blocks < 1 ||
      rate < 1 || sources < 1 || sources > 200 || ramp < 0)
    Die("usage: --attestation URL --kps URL --ca FILE --tcti T --host H "
        "--work DIR [--rounds R] [--blocks B] [--rate N] [--sources S] "
        "[--ramp SECONDS]");

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1)
    Die("cannot load the CA " + ca_file);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);

  // As in trusted_bench.cc: the provider's clock is moved a day ahead for
  // each measured call, so its cached token looks expired and it attests.
  std::atomic<int64_t> offset{0};
  auto p = ClockedProvider(cfg, work + "/provider", offset);
  if (!p.ok()) Die("provider: " + p.error().message);
  auto kek = (*p)->CreateKek("bench-vm");
  if (!kek.ok()) Die("CreateKek: " + kek.error().message);

  auto attest = [&](std::vector<double>& into, const char* when) {
    offset = 86400;
    const uint64_t before = (*p)->attestations();
    auto t0 = Clock::now();
    auto k = (*p)->GetKek(kek->ref);
    auto t1 = Clock::now();
    offset = 0;
    if (!k.ok())
      Die(std::string("attestation ") + when + ": " + k.error().message);
    if (!k->Equals(kek->kek)) Die("GetKek returned another KEK");
    if ((*p)->attestations() - before != 1) Die("a fresh call did not attest");
    into.push_back(Ms(t1 - t0));
  };

  Flood flood(ctx, PortOf(cfg.attestation_url), cfg.host, rate, sources);
  std::vector<double> idle, flooded;
  double flood_seconds = 0;
  for (int b = 0; b < blocks; ++b) {
    for (int r = 0; r < rounds; ++r) attest(idle, "while idle");
    flood.Start();
    // Let the flood reach its rate (and the rate limiter its steady state;
    // with a long --ramp, the service the state a sustained flood leaves).
    std::this_thread::sleep_for(std::chrono::seconds(ramp));
    for (int r = 0; r < rounds; ++r) attest(flooded, "under the flood");
    flood_seconds += flood.Stop();
    // Let the last flood requests drain before the next idle block.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  SSL_CTX_free(ctx);

  double mi = Median(idle), mf = Median(flooded);
  std::printf("attestations: %zu idle, %zu under the flood, in %d blocks\n",
              idle.size(), flooded.size(), blocks);
  std::printf(
      "flood: %.0f req/s sent to /v1/nonce from %d sources "
      "(asked %d/s); answers:",
      flood.sent() / flood_seconds, sources, rate);
  for (auto [status, n] : flood.statuses())
    std::printf(" %s=%llu", status ? std::to_string(status).c_str() : "failed",
                static_cast<unsigned long long>(n));
  std::printf("\n");
  std::printf(
      "idle   attestation (nonce + quote + attest + unwrap): median %8.2f ms\n",
      mi);
  std::printf(
      "flood  attestation (nonce + quote + attest + unwrap): median %8.2f ms\n",
      mf);
  std::printf("ratio flood/idle (median): %.2fx (goal: <= 2)\n", mf / mi);
  return 0;
}

}  // namespace
}  // namespace vcrypt

int main(int argc, char** argv) { return vcrypt::Main(argc, argv); }
