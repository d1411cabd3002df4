// Tests of the KMIP TLS transport (keyproviders/standard/tls_client.h):
//  - TlsConfigTest: configuration errors (no server).
//  - TlsLocalTest: against an in-process OpenSSL server whose behaviour each
//    test scripts (non-KMIP replies, oversized or truncated messages,
//    closing, trickling, silence), plus "nothing listening".
//  - PyKmipTest: against a real pykmip-server on loopback, started once per
//    suite through tests/kmip/pykmip-server.sh; skipped only when
//    pykmip-server is not installed.
//
// SIGPIPE keeps its default disposition in this binary on purpose: a write
// by the library to a closed connection would kill the test (the library
// must use MSG_NOSIGNAL). The in-process server thread blocks SIGPIPE for
// itself only.
#include "keyproviders/standard/tls_client.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/handles.h"
#include "tests/kmip/pykmip_fixture.h"

namespace vcrypt {
namespace {

using kmip_test::Clock;
using kmip_test::Config;
using kmip_test::FreePort;
using kmip_test::MakeClient;
using kmip_test::PyKmipSuite;
using kmip_test::Seconds;
using kmip_test::TestDir;
using std::chrono::milliseconds;

// ---------------------------------------------------------------------------
// KMIP bytes.

// DiscoverVersions request, KMIP 1.2, one batch item with Unique Batch Item
// ID 0x01 and an empty payload, as encoded by PyKMIP 0.10's
// kmip.core.messages.RequestMessage.write (taken once with
// /usr/bin/python3; independent of vcrypt's codec).
const std::vector<uint8_t> kDiscoverVersionsRequest = [] {
  const char* hex =
      "42007801000000704200770100000038420069010000002042006a02000000040000"
      "00010000000042006b0200000004000000020000000042000d020000000400000001"
      "0000000042000f010000002842005c05000000040000001e00000000420093080000"
      "000101000000000000004200790100000000";
  std::vector<uint8_t> v;
  for (const char* p = hex; p[0] && p[1]; p += 2) {
    v.push_back(
        static_cast<uint8_t>(std::stoi(std::string(p, 2), nullptr, 16)));
  }
  return v;
}();

uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | p[3];
}

// Walks a TTLV encoding and checks it is well formed: every item fits in its
// parent, fixed-size types have their fixed lengths, padding to 8 bytes.
// Records the value of every Enumeration with tag `want_tag` in *enums.
bool WellFormedTtlv(const uint8_t* p, size_t len, uint32_t want_tag,
                    std::vector<uint32_t>* enums, std::string* why) {
  size_t off = 0;
  while (off < len) {
    if (len - off < 8) return *why = "truncated header", false;
    const uint32_t tag =
        (uint32_t{p[off]} << 16) | (uint32_t{p[off + 1]} << 8) | p[off + 2];
    const uint8_t type = p[off + 3];
    const uint32_t vlen = Be32(p + off + 4);
    const size_t padded = (size_t{vlen} + 7) / 8 * 8;
    if (len - off - 8 < padded) return *why = "item overruns parent", false;
    const uint8_t* v = p + off + 8;
    switch (type) {
      case 0x01:  // Structure
        if (!WellFormedTtlv(v, vlen, want_tag, enums, why)) return false;
        break;
      case 0x02:  // Integer
      case 0x05:  // Enumeration
      case 0x0A:  // Interval
        if (vlen != 4) return *why = "bad 4-byte length", false;
        if (type == 0x05 && tag == want_tag) enums->push_back(Be32(v));
        break;
      case 0x03:  // Long Integer
      case 0x06:  // Boolean
      case 0x09:  // Date-Time
        if (vlen != 8) return *why = "bad 8-byte length", false;
        break;
      case 0x04:  // Big Integer
        if (vlen % 8 != 0) return *why = "bad big integer length", false;
        break;
      case 0x07:  // Text String
      case 0x08:  // Byte String
        break;
      default:
        return *why = "unknown type " + std::to_string(type), false;
    }
    off += 8 + padded;
  }
  return true;
}

constexpr uint32_t kTagResultStatus = 0x42007F;

// Checks `m` is one well-formed KMIP Response Message whose batch items all
// have Result Status Success.
void ExpectSuccessfulResponse(const SecureBuffer& m) {
  ASSERT_GE(m.size(), kKmipHeaderSize);
  EXPECT_EQ(m.data()[0], 0x42);
  EXPECT_EQ(m.data()[1], 0x00);
  EXPECT_EQ(m.data()[2], 0x7B) << "not a Response Message";
  EXPECT_EQ(m.data()[3], 0x01) << "not a Structure";
  EXPECT_EQ(Be32(m.data() + 4) + kKmipHeaderSize, m.size());
  std::vector<uint32_t> statuses;
  std::string why;
  ASSERT_TRUE(
      WellFormedTtlv(m.data(), m.size(), kTagResultStatus, &statuses, &why))
      << why;
  ASSERT_EQ(statuses.size(), 1u);
  EXPECT_EQ(statuses[0], 0u) << "Result Status is not Success";
}

// A minimal well-formed Response Message: header + empty Batch Count, enough
// for the transport (which only frames messages).
std::vector<uint8_t> CannedResponse() {
  return {0x42, 0x00, 0x7B, 0x01, 0x00, 0x00, 0x00, 0x10,  // Response Message
          0x42, 0x00, 0x0D, 0x02, 0x00, 0x00, 0x00, 0x04,  // Batch Count
          0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00};
}

// ---------------------------------------------------------------------------
// In-process TLS server with scripted behaviour.

class LocalServer {
 public:
  // Called with each accepted connection after a successful handshake (the
  // server requires a client certificate from ca.pem). The socket is
  // blocking with 10 s timeouts, so a handler cannot hang the test.
  using Handler = std::function<void(SSL* ssl, int fd)>;

  // tls=false: a listener that never accepts (its kernel backlog still
  // completes TCP handshakes, up to `backlog` + 1 of them).
  explicit LocalServer(Handler handler, bool tls = true, int backlog = 8)
      : handler_(std::move(handler)), tls_(tls) {
    listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int one = 1;
    ::setsockopt(listen_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) !=
            0 ||
        ::listen(listen_.get(), backlog) != 0 ||
        ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&a), &len) !=
            0) {
      ADD_FAILURE() << "cannot listen";
      return;
    }
    port_ = ntohs(a.sin_port);
    if (!tls_) return;
    const std::string d = TestDir::Get().certs();
    ctx_.reset(SSL_CTX_new(TLS_server_method()));
    if (SSL_CTX_use_certificate_chain_file(ctx_.get(),
                                           (d + "/server.pem").c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx_.get(), (d + "/server-key.pem").c_str(),
                                    SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(ctx_.get(), (d + "/ca.pem").c_str(),
                                      nullptr) != 1) {
      ADD_FAILURE() << "cannot set up the local TLS server";
      return;
    }
    SSL_CTX_set_verify(
        ctx_.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    thread_ = std::thread([this] { Serve(); });
  }
  ~LocalServer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return port_; }
  int handshakes() const { return handshakes_; }

 private:
  void Serve() {
    // This thread only: a write to a closed client must not kill the test.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    while (!stop_) {
      pollfd p{listen_.get(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!fd.valid()) continue;
      timeval tv{10, 0};
      ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      SslPtr ssl(SSL_new(ctx_.get()));
      SSL_set_fd(ssl.get(), fd.get());
      if (SSL_accept(ssl.get()) == 1) {
        ++handshakes_;
        handler_(ssl.get(), fd.get());
      }
      ERR_clear_error();
    }
  }

  Handler handler_;
  bool tls_;
  UniqueFd listen_;
  SslCtxPtr ctx_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> handshakes_{0};
  std::thread thread_;
};

// Reads one KMIP message on the server side (blocking); false on EOF/error.
bool ServerReadMessage(SSL* ssl, std::vector<uint8_t>* out) {
  uint8_t h[8];
  size_t got = 0;
  for (size_t off = 0; off < 8; off += got) {
    if (SSL_read_ex(ssl, h + off, 8 - off, &got) != 1) return false;
  }
  std::vector<uint8_t> m(h, h + 8);
  m.resize(8 + Be32(h + 4));
  for (size_t off = 8; off < m.size(); off += got) {
    if (SSL_read_ex(ssl, m.data() + off, m.size() - off, &got) != 1) {
      return false;
    }
  }
  *out = std::move(m);
  return true;
}

bool ServerWrite(SSL* ssl, const std::vector<uint8_t>& bytes) {
  size_t written = 0;
  return SSL_write_ex(ssl, bytes.data(), bytes.size(), &written) == 1;
}

// Answers every request with CannedResponse() until the client closes.
void EchoCanned(SSL* ssl, int) {
  std::vector<uint8_t> req;
  while (ServerReadMessage(ssl, &req)) {
    if (!ServerWrite(ssl, CannedResponse())) return;
  }
}

// ---------------------------------------------------------------------------
// TlsConfigTest

class TlsConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(TestDir::Get().error().empty()) << TestDir::Get().error();
  }
};

TEST_F(TlsConfigTest, ValidConfigLoads) {
  auto c = TlsClient::Create(Config());
  ASSERT_TRUE(c.ok()) << c.error().message;
}

TEST_F(TlsConfigTest, MissingCaFileIsNotFoundAndNotTransport) {
  TlsConfig cfg = Config();
  cfg.ca_file = TestDir::Get().path() + "/no-such-ca.pem";
  auto c = TlsClient::Create(cfg);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(IsTransportError(c.error()));
  EXPECT_NE(c.error().message.find("no-such-ca.pem"), std::string::npos)
      << c.error().message;
}

TEST_F(TlsConfigTest, CaFileWithoutCertificatesRefused) {
  TlsConfig cfg = Config();
  cfg.ca_file = TestDir::Get().path() + "/garbage.pem";
  std::ofstream(cfg.ca_file) << "not a certificate\n";
  auto c = TlsClient::Create(cfg);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(c.error().message.find("garbage.pem"), std::string::npos)
      << c.error().message;
}

TEST_F(TlsConfigTest, KeyNotMatchingCertificateRefused) {
  TlsConfig cfg = Config();
  cfg.key_file = TestDir::Get().certs() + "/other-client-key.pem";
  auto c = TlsClient::Create(cfg);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(c.error().message.find("does not match"), std::string::npos)
      << c.error().message;
}

TEST_F(TlsConfigTest, CertificateWithoutClientAuthRefused) {
  // The server certificate has only the serverAuth EKU.
  TlsConfig cfg = Config("server");
  auto c = TlsClient::Create(cfg);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(c.error().message.find("clientAuth"), std::string::npos)
      << c.error().message;
}

TEST_F(TlsConfigTest, EmptyConnectionIsNotUsable) {
  TlsConnection conn;
  EXPECT_FALSE(conn.IsUsable());
  Status st = conn.Send(kDiscoverVersionsRequest);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(IsTransportError(st.error()));
  auto r = conn.ReadKmipMessage();
  ASSERT_FALSE(r.ok());
  conn.Close();  // idempotent on an empty connection
}

TEST_F(TlsConfigTest, BadAddressIsInvalidArgument) {
  TlsClient client = MakeClient(Config());
  auto r = client.Connect("", 5696);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  auto r2 = client.Connect("127.0.0.1", 0);
  ASSERT_FALSE(r2.ok());
  EXPECT_FALSE(IsTransportError(r2.error()));
}

// ---------------------------------------------------------------------------
// TlsLocalTest

class TlsLocalTest : public TlsConfigTest {};

TEST_F(TlsLocalTest, ConnectRefusedQuickly) {
  TlsClient client = MakeClient(Config());
  const uint16_t port = FreePort();
  auto t0 = Clock::now();
  auto r = client.Connect("127.0.0.1", port);
  auto elapsed = Clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsTransportError(r.error()));
  EXPECT_NE(r.error().message.find("connection refused"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << r.error().message;
  EXPECT_LT(Seconds(elapsed), 1.0);
}

TEST_F(TlsLocalTest, HandshakeTimesOutAgainstSilentListener) {
  // The kernel completes the TCP handshake (listen backlog) but nobody ever
  // speaks TLS: only the connect timeout can end this.
  LocalServer silent(nullptr, /*tls=*/false);
  TlsConfig cfg = Config();
  cfg.connect_timeout = milliseconds(800);
  TlsClient client = MakeClient(cfg);
  auto t0 = Clock::now();
  auto r = client.Connect("127.0.0.1", silent.port());
  auto elapsed = Clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsTransportError(r.error()));
  EXPECT_NE(r.error().message.find("TLS handshake timed out"),
            std::string::npos)
      << r.error().message;
  EXPECT_GE(Seconds(elapsed), 0.75);
  EXPECT_LT(Seconds(elapsed), 0.8 + 1.0);
}

TEST_F(TlsLocalTest, TcpConnectTimesOutWhenSynsAreDropped) {
  // Backlog 0 holds one unaccepted connection; with it taken, Linux drops
  // further SYNs, like a blackholed server.
  LocalServer full(nullptr, /*tls=*/false, /*backlog=*/0);
  UniqueFd filler(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(full.port());
  ASSERT_EQ(::connect(filler.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)),
            0);
  TlsConfig cfg = Config();
  cfg.connect_timeout = milliseconds(500);
  TlsClient client = MakeClient(cfg);
  auto t0 = Clock::now();
  auto r = client.Connect("127.0.0.1", full.port());
  auto elapsed = Clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsTransportError(r.error()));
  EXPECT_NE(r.error().message.find("TCP connect timed out after 500 ms"),
            std::string::npos)
      << r.error().message;
  EXPECT_GE(Seconds(elapsed), 0.45);
  EXPECT_LT(Seconds(elapsed), 0.5 + 1.0);
}

TEST_F(TlsLocalTest, RoundTripOverTls13AndReuse) {
  LocalServer server(EchoCanned);
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  // OpenSSL on both ends: the client allows 1.3 and gets it.
  EXPECT_EQ(conn->protocol_version(), "TLSv1.3");
  EXPECT_EQ(conn->server(), "127.0.0.1:" + std::to_string(server.port()));
  for (int i = 0; i < 3; ++i) {
    auto m = conn->RoundTrip(kDiscoverVersionsRequest);
    ASSERT_TRUE(m.ok()) << m.error().message;
    EXPECT_EQ(std::vector<uint8_t>(m->data(), m->data() + m->size()),
              CannedResponse());
    // TLS 1.3 session tickets arrive unsolicited; they must not make an
    // idle connection look broken.
    EXPECT_TRUE(conn->IsUsable());
  }
  // Move keeps the connection working.
  TlsConnection moved = std::move(conn).value();
  auto m = moved.RoundTrip(kDiscoverVersionsRequest);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(server.handshakes(), 1);
}

TEST_F(TlsLocalTest, NonKmipResponseRefused) {
  LocalServer server([](SSL* ssl, int) {
    std::vector<uint8_t> req;
    if (!ServerReadMessage(ssl, &req)) return;
    std::string http = "HTTP/1.1 400 Bad Request\r\n\r\n";
    ServerWrite(ssl, std::vector<uint8_t>(http.begin(), http.end()));
  });
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(IsTransportError(m.error()));
  EXPECT_NE(m.error().message.find("not a KMIP message"), std::string::npos)
      << m.error().message;
  EXPECT_FALSE(conn->IsUsable());
}

TEST_F(TlsLocalTest, OversizedMessageRefusedBeforeReading) {
  LocalServer server([](SSL* ssl, int) {
    std::vector<uint8_t> req;
    if (!ServerReadMessage(ssl, &req)) return;
    // Announces a 1 MiB body (plus header: over the 1 MiB default limit),
    // sends none of it.
    ServerWrite(ssl, {0x42, 0x00, 0x7B, 0x01, 0x00, 0x10, 0x00, 0x00});
    ServerReadMessage(ssl, &req);  // until the client goes away
  });
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  auto t0 = Clock::now();
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_FALSE(m.ok());
  EXPECT_LT(Seconds(Clock::now() - t0), 1.0) << "waited for the body";
  EXPECT_TRUE(IsTransportError(m.error()));
  EXPECT_NE(m.error().message.find("exceeds the limit of 1048576 bytes"),
            std::string::npos)
      << m.error().message;
  EXPECT_FALSE(conn->IsUsable());
}

TEST_F(TlsLocalTest, ServerClosingMidMessageIsError) {
  LocalServer server([](SSL* ssl, int) {
    std::vector<uint8_t> req;
    if (!ServerReadMessage(ssl, &req)) return;
    // Announces 64 bytes of body, sends 16, then closes.
    std::vector<uint8_t> partial = {0x42, 0x00, 0x7B, 0x01, 0, 0, 0, 64};
    partial.resize(8 + 16, 0);
    ServerWrite(ssl, partial);
    SSL_shutdown(ssl);
  });
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(IsTransportError(m.error()));
  EXPECT_NE(
      m.error().message.find("closed the connection after 24 of 72 bytes"),
      std::string::npos)
      << m.error().message;
}

TEST_F(TlsLocalTest, TricklingServerHitsTheMessageDeadline) {
  // One byte every 200 ms: each read makes progress, but the message as a
  // whole must not take longer than the I/O timeout.
  std::atomic<bool> done{false};
  LocalServer server([&done](SSL* ssl, int) {
    std::vector<uint8_t> req;
    if (!ServerReadMessage(ssl, &req)) return;
    std::vector<uint8_t> resp = CannedResponse();
    for (uint8_t b : resp) {
      if (done || !ServerWrite(ssl, {b})) return;
      std::this_thread::sleep_for(milliseconds(200));
    }
  });
  TlsConfig cfg = Config();
  cfg.io_timeout = milliseconds(1000);
  TlsClient client = MakeClient(cfg);
  auto conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  auto t0 = Clock::now();
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  auto elapsed = Clock::now() - t0;
  done = true;
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(IsTransportError(m.error()));
  EXPECT_NE(m.error().message.find("response incomplete within 1000 ms"),
            std::string::npos)
      << m.error().message;
  EXPECT_LT(Seconds(elapsed), 1.0 + 0.5);
}

TEST_F(TlsLocalTest, ReconnectAfterServerClosedConnection) {
  // Each connection gets one answer, then the server closes it.
  LocalServer server([](SSL* ssl, int) {
    std::vector<uint8_t> req;
    if (!ServerReadMessage(ssl, &req)) return;
    ServerWrite(ssl, CannedResponse());
    SSL_shutdown(ssl);
  });
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_TRUE(m.ok()) << m.error().message;

  // The close arrives asynchronously; IsUsable notices it without blocking.
  auto t0 = Clock::now();
  while (conn->IsUsable() && Clock::now() - t0 < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_FALSE(conn->IsUsable());
  auto m2 = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_FALSE(m2.ok());
  EXPECT_TRUE(IsTransportError(m2.error()));

  // "One connection per server, reconnect on error": replace it.
  conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  auto m3 = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_TRUE(m3.ok()) << m3.error().message;
  EXPECT_EQ(server.handshakes(), 2);
}

TEST_F(TlsLocalTest, WritingToAClosedConnectionIsAnErrorNotSigpipe) {
  // The server closes the socket right after the handshake. Writing to it
  // then fails with EPIPE/ECONNRESET; with write(2) instead of
  // send(MSG_NOSIGNAL) this process would die of SIGPIPE.
  LocalServer server([](SSL*, int fd) { ::shutdown(fd, SHUT_RDWR); });
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server.port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  std::vector<uint8_t> big(256 * 1024, 0);
  Status st;
  for (int i = 0; i < 50 && st.ok(); ++i) {
    st = conn->Send(big);
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_FALSE(st.ok()) << "writes to a closed connection kept succeeding";
  EXPECT_TRUE(IsTransportError(st.error()));
  EXPECT_NE(st.error().message.find("cannot send request"), std::string::npos)
      << st.error().message;
  EXPECT_FALSE(conn->IsUsable());
}

// ---------------------------------------------------------------------------
// PyKmipTest: a real pykmip-server 0.10 on 127.0.0.1.

// One server for the whole suite (see pykmip_fixture.h).
class PyKmipTest : public PyKmipSuite<PyKmipTest> {};

TEST_F(PyKmipTest, RoundTripDiscoverVersions) {
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server().port());
  ASSERT_TRUE(conn.ok()) << conn.error().message << "\n" << server().LogTail();
  EXPECT_EQ(conn->protocol_version(), "TLSv1.2");  // all PyKMIP 0.10 speaks
  for (int i = 0; i < 2; ++i) {                    // the connection is reused
    EXPECT_TRUE(conn->IsUsable());
    auto m = conn->RoundTrip(kDiscoverVersionsRequest);
    ASSERT_TRUE(m.ok()) << m.error().message << "\n" << server().LogTail();
    ExpectSuccessfulResponse(*m);
  }
  conn->Close();
  EXPECT_FALSE(conn->IsUsable());
}

TEST_F(PyKmipTest, ConnectByHostName) {
  // "localhost" may resolve to ::1 first (nothing listens there: refused),
  // then 127.0.0.1; the certificate carries DNS:localhost; SNI is sent.
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("localhost", server().port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_TRUE(m.ok()) << m.error().message;
  ExpectSuccessfulResponse(*m);
}

TEST_F(PyKmipTest, ConnectToIpVerifyingName) {
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server().port(), "localhost");
  ASSERT_TRUE(conn.ok()) << conn.error().message;
}

TEST_F(PyKmipTest, WrongHostNameRefused) {
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server().port(), "example.com");
  ASSERT_FALSE(conn.ok());
  const std::string& msg = conn.error().message;
  EXPECT_TRUE(IsTransportError(conn.error()));
  EXPECT_NE(msg.find("certificate verification failed: hostname mismatch"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("expected example.com"), std::string::npos) << msg;
}

TEST_F(PyKmipTest, WrongIpAddressRefused) {
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server().port(), "127.0.0.2");
  ASSERT_FALSE(conn.ok());
  EXPECT_NE(conn.error().message.find("IP address mismatch"), std::string::npos)
      << conn.error().message;
}

TEST_F(PyKmipTest, ServerCertificateFromAnotherCaRefused) {
  // The client trusts only the other CA; the server's certificate is from
  // the test CA.
  TlsClient client = MakeClient(Config("other-client", "other-ca"));
  auto conn = client.Connect("127.0.0.1", server().port());
  ASSERT_FALSE(conn.ok());
  const std::string& msg = conn.error().message;
  EXPECT_TRUE(IsTransportError(conn.error()));
  EXPECT_NE(msg.find("KMS 127.0.0.1:" + std::to_string(server().port())),
            std::string::npos)
      << msg;
  // PyKMIP (Python's ssl) sends its CA along with the leaf, so OpenSSL
  // reports "self-signed certificate in certificate chain" at depth 1; a
  // server sending only its leaf gives "unable to get local issuer
  // certificate". Either way the message names the foreign CA and ours.
  EXPECT_NE(msg.find("server certificate verification failed: "),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("issued by CN=vcrypt-test-ca"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not issued by a CA in " + TestDir::Get().certs() +
                     "/other-ca.pem"),
            std::string::npos)
      << msg;
}

TEST_F(PyKmipTest, ClientCertificateFromAnotherCaRejectedByServer) {
  // The client trusts the server, but its certificate is from the other CA.
  TlsClient client = MakeClient(Config("other-client", "ca"));
  auto conn = client.Connect("127.0.0.1", server().port());
  ASSERT_FALSE(conn.ok());
  const std::string& msg = conn.error().message;
  EXPECT_TRUE(IsTransportError(conn.error()));
  EXPECT_NE(msg.find("the server rejected the client certificate"),
            std::string::npos)
      << msg;
}

TEST_F(PyKmipTest, PausedServerTimesOutInsteadOfHanging) {
  TlsConfig cfg = Config();
  cfg.io_timeout = milliseconds(1500);
  cfg.connect_timeout = milliseconds(1000);
  TlsClient client = MakeClient(cfg);
  auto conn = client.Connect("127.0.0.1", server().port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;

  const pid_t pid = server().Pid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(-pid, SIGSTOP), 0);
  // Resume the server however this test ends.
  struct Resume {
    pid_t pid;
    ~Resume() { ::kill(-pid, SIGCONT); }
  } resume{pid};

  // The whole process group is stopped: PyKMIP serves each connection in
  // a process of its own, which a stop of the parent alone would miss.
  // The request fits in the socket buffers; the response never comes.
  auto t0 = Clock::now();
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  double elapsed = Seconds(Clock::now() - t0);
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(IsTransportError(m.error()));
  EXPECT_NE(m.error().message.find("no response within 1500 ms"),
            std::string::npos)
      << m.error().message;
  EXPECT_GE(elapsed, 1.45);
  EXPECT_LT(elapsed, 1.5 + 1.0);
  EXPECT_FALSE(conn->IsUsable());

  // A new connection: the kernel still accepts TCP for the stopped
  // process, the TLS handshake gets no answer.
  t0 = Clock::now();
  auto c2 = client.Connect("127.0.0.1", server().port());
  elapsed = Seconds(Clock::now() - t0);
  ASSERT_FALSE(c2.ok());
  EXPECT_NE(c2.error().message.find("TLS handshake timed out"),
            std::string::npos)
      << c2.error().message;
  EXPECT_LT(elapsed, 1.0 + 1.0);

  // After SIGCONT the server serves again (backlogged connections notice
  // our side is gone).
  ::kill(-pid, SIGCONT);
  auto c3 = client.Connect("127.0.0.1", server().port());
  ASSERT_TRUE(c3.ok()) << c3.error().message << "\n" << server().LogTail();
  auto m3 = c3->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_TRUE(m3.ok()) << m3.error().message << "\n" << server().LogTail();
  ExpectSuccessfulResponse(*m3);
}

TEST_F(PyKmipTest, ReconnectAfterServerRestart) {
  TlsClient client = MakeClient(Config());
  auto conn = client.Connect("127.0.0.1", server().port());
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  ASSERT_TRUE(conn->RoundTrip(kDiscoverVersionsRequest).ok());

  // The KMS crashes (SIGKILL: the kernel closes its sockets) and comes back
  // on the same port.
  server().Kill();
  const std::string restarted = server().Restart(/*keep_db=*/false);
  ASSERT_TRUE(restarted.empty()) << restarted;

  EXPECT_FALSE(conn->IsUsable()) << "the old connection looks alive";
  auto stale = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_FALSE(stale.ok());
  EXPECT_TRUE(IsTransportError(stale.error()));

  conn = client.Connect("127.0.0.1", server().port());
  ASSERT_TRUE(conn.ok()) << conn.error().message << "\n" << server().LogTail();
  auto m = conn->RoundTrip(kDiscoverVersionsRequest);
  ASSERT_TRUE(m.ok()) << m.error().message;
  ExpectSuccessfulResponse(*m);
}

}  // namespace
}  // namespace vcrypt
