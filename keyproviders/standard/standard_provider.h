// The standard key provider: KEKs live on an external KMS, spoken to over
// KMIP with mutual TLS. vcrypt records only each KEK's KMS unique
// identifier; the key itself exists on the host only in vcryptd's memory.
//
// A provider talks to a cluster of KMS servers (KmsCluster): an ordered
// list, one reused TLS connection per server, failing over to the next
// server on connect/TLS/I/O failures only. A KMIP result error (the server
// answered "Item Not Found", "Permission Denied", ...) is an answer, never
// a reason to ask another server.
//
// Boot storms: concurrent GetKek calls are coalesced. While one KMIP
// message is in flight, further requests queue up and leave together in
// the next message (up to kMaxBatchItems keys per message, "continue on
// error" so one missing key does not fail the others). Each key is a Get
// and a GetAttributes of its State: a key the KMS no longer calls Active
// (revoked: Deactivated or Compromised) is refused, kKeyUnavailable,
// "... revoked on the KMS (state Deactivated) ...". Opening the volumes
// of many VMs at once thus costs a handful of messages over one TLS session.
//
// Files under the provider directory (0700; files 0600, atomic writes):
//   config.json  {"version":1,"type":"standard","name":..,"servers":["h:p",..],
//                 "connect_timeout_ms":..,"io_timeout_ms":..}
//   ca.pem       the only trust anchor for the KMS servers
//   cert.pem     this host's client certificate (clientAuth)
//   key.pem      its private key
//
// KekRef for standard: kek_id = the KMS Unique Identifier; data = {}.
#ifndef VCRYPT_KEYPROVIDERS_STANDARD_STANDARD_PROVIDER_H_
#define VCRYPT_KEYPROVIDERS_STANDARD_STANDARD_PROVIDER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "keyproviders/key_provider.h"
#include "keyproviders/standard/kmip.h"
#include "keyproviders/standard/tls_client.h"

namespace vcrypt {

struct KmsServer {
  std::string host;
  uint16_t port = 5696;
  std::string ToString() const;  // "host:port" ("[v6]:port")
};

// "host:port[,host:port...]" -> servers. kInvalidArgument on a bad entry.
Result<std::vector<KmsServer>> ParseKmsServers(std::string_view list);

// An ordered set of KMS servers with one connection each.
class KmsCluster {
 public:
  KmsCluster(TlsClient client, std::vector<KmsServer> servers);
  ~KmsCluster();

  // One KMIP exchange: `items` go in one Request Message to the first
  // server that can be reached (in list order), failing over on transport
  // errors only. A reused connection that fails gets one retry on a fresh
  // connection to the same server first. A request that was sent but whose
  // answer was lost is re-sent (anywhere) only if every operation in it is
  // idempotent (Get, GetAttributes, Locate, Query, DiscoverVersions);
  // otherwise the error says so and the caller decides. On success `matched` has, per request item, the response
  // item answering it (or nullptr). Errors: kKeyUnavailable naming every
  // server tried and why, when none could be reached; kInvalidArgument for a
  // malformed response (not a reason to fail over: the server answered).
  struct Exchange {
    kmip::EncodedRequest request;
    SecureBuffer response_bytes;  // owns the bytes `response` points into
    kmip::Response response;
    std::vector<const kmip::ResponseItem*> matched;
    std::string server;
  };
  Result<std::unique_ptr<Exchange>> Execute(std::span<const kmip::RequestItem> items,
                                            bool continue_on_error = false);

  // Per server: last state ("ok", "error", "unknown"), last error and
  // since when. No secrets.
  nlohmann::json States() const;
  // Request messages sent so far (for benchmarks and `provider show`).
  uint64_t messages_sent() const { return messages_sent_.load(); }
  uint64_t connections_made() const { return connections_made_.load(); }
  const std::vector<KmsServer>& servers() const { return servers_; }

 private:
  struct ServerState;
  enum class AttemptResult { kOk, kNotSent, kLostAfterSend, kFatal };
  struct Attempt {
    AttemptResult result;
    Error error;
  };
  // One try on server i (caller holds its lock).
  Attempt TryServer(size_t i, std::span<const kmip::RequestItem> items,
                    bool continue_on_error, Exchange* ex);

  TlsClient client_;
  std::vector<KmsServer> servers_;
  std::vector<std::unique_ptr<ServerState>> states_;
  std::atomic<uint64_t> messages_sent_{0};
  std::atomic<uint64_t> connections_made_{0};
};

struct StandardProviderOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds io_timeout{10000};
};

class StandardProvider : public KeyProvider {
 public:
  static constexpr size_t kMaxBatchItems = 64;

  // Writes the provider's files into a fresh `dir` (must not exist) and
  // checks the cluster first: at least one server must complete a mutually
  // authenticated handshake and answer DiscoverVersions; otherwise nothing
  // is written and the error names each server and its failure.
  static Result<std::unique_ptr<StandardProvider>> Create(
      const std::string& name, const std::string& dir,
      const std::vector<KmsServer>& servers, const std::string& ca_pem,
      const std::string& cert_pem, const SecureBuffer& key_pem,
      StandardProviderOptions options = {});
  static Result<std::unique_ptr<StandardProvider>> Load(const std::string& name,
                                                        const std::string& dir);

  const std::string& name() const override { return name_; }
  std::string_view type() const override { return "standard"; }
  // KMIP Create (AES-256, wrap/unwrap usage, Name "vcrypt-<vm>") then
  // Activate + Get. A key created but not activated is destroyed again.
  Result<NewKek> CreateKek(std::string_view vm) override;
  Result<SecureBuffer> GetKek(const KekRef& ref) override;
  std::vector<Result<SecureBuffer>> GetKeks(std::span<const KekRef> refs) override;
  // Revoke (cessation of operation) + Destroy.
  Status DestroyKek(const KekRef& ref) override;
  nlohmann::json Describe() const override;

  KmsCluster& cluster() { return *cluster_; }

 private:
  StandardProvider(std::string name, std::string dir, std::unique_ptr<KmsCluster> c);
  // Sends Get + GetAttributes(State) for `uids`, at most kMaxBatchItems
  // keys per message.
  std::vector<Result<SecureBuffer>> FetchBatch(const std::vector<std::string>& uids);
  // Ok when the GetAttributes answer says State Active.
  static Status CheckActive(const kmip::ResponseItem* item);

  std::string name_;
  std::string dir_;
  std::unique_ptr<KmsCluster> cluster_;

  // Coalescing of concurrent GetKek calls (see the file comment).
  struct Pending {
    std::string uid;
    std::promise<Result<SecureBuffer>> done;
  };
  std::mutex queue_mu_;
  std::deque<std::shared_ptr<Pending>> queue_;
  bool flushing_ = false;
};

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_STANDARD_STANDARD_PROVIDER_H_
