#include "keyproviders/standard/standard_provider.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "common/atomic_file.h"
#include "common/clock.h"
#include "common/random.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int kConfigVersion = 1;

TlsConfig MakeTlsConfig(const std::string& dir, const StandardProviderOptions& o) {
  TlsConfig c;
  c.ca_file = dir + "/ca.pem";
  c.cert_file = dir + "/cert.pem";
  c.key_file = dir + "/key.pem";
  c.connect_timeout = o.connect_timeout;
  c.io_timeout = o.io_timeout;
  return c;
}

}  // namespace

std::string KmsServer::ToString() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

Result<std::vector<KmsServer>> ParseKmsServers(std::string_view list) {
  std::vector<KmsServer> out;
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view e = list.substr(pos, comma - pos);
    auto bad = [&] {
      return MakeError(ErrorCode::kInvalidArgument,
                       "bad KMS address '" + std::string(e) + "' (use HOST:PORT)");
    };
    KmsServer s;
    size_t colon;
    if (!e.empty() && e[0] == '[') {
      size_t close = e.find(']');
      if (close == std::string_view::npos || close + 1 >= e.size() || e[close + 1] != ':')
        return bad();
      s.host = std::string(e.substr(1, close - 1));
      colon = close + 1;
    } else {
      colon = e.rfind(':');
      if (colon == std::string_view::npos || e.find(':') != colon) return bad();
      s.host = std::string(e.substr(0, colon));
    }
    std::string_view port = e.substr(colon + 1);
    if (s.host.empty() || port.empty() || port.size() > 5) return bad();
    unsigned p = 0;
    for (char c : port) {
      if (c < '0' || c > '9') return bad();
      p = p * 10 + static_cast<unsigned>(c - '0');
    }
    if (p == 0 || p > 65535) return bad();
    s.port = static_cast<uint16_t>(p);
    for (char c : s.host)
      if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
            c == '_'))
        return bad();
    out.push_back(std::move(s));
    pos = comma + 1;
  }
  if (out.empty()) return MakeError(ErrorCode::kInvalidArgument, "no KMS server given");
  return out;
}

// --- KmsCluster ---------------------------------------------------------------

struct KmsCluster::ServerState {
  std::mutex mu;  // one request at a time on the connection
  TlsConnection conn;
  std::optional<kmip::ProtocolVersion> version;
  // Reported by States(); guarded by info_mu.
  mutable std::mutex info_mu;
  std::string state = "unknown";
  std::string last_error;
  std::string since;
};

KmsCluster::KmsCluster(TlsClient client, std::vector<KmsServer> servers)
    : client_(std::move(client)), servers_(std::move(servers)) {
  for (size_t i = 0; i < servers_.size(); ++i)
    states_.push_back(std::make_unique<ServerState>());
}

KmsCluster::~KmsCluster() = default;

Json KmsCluster::States() const {
  Json out = Json::array();
  for (size_t i = 0; i < servers_.size(); ++i) {
    const auto& s = *states_[i];
    std::lock_guard lock(s.info_mu);
    Json j = {{"server", servers_[i].ToString()}, {"state", s.state}};
    if (!s.last_error.empty()) j["last_error"] = s.last_error;
    if (!s.since.empty()) j["since"] = s.since;
    out.push_back(std::move(j));
  }
  return out;
}

namespace {
// Operations that can be sent again, to the same or another server, when
// the answer to a request that may have arrived was lost.
bool Idempotent(std::span<const kmip::RequestItem> items) {
  for (const auto& it : items) {
    switch (it.operation) {
      case kmip::Operation::kGet:
      case kmip::Operation::kGetAttributes:
      case kmip::Operation::kLocate:
      case kmip::Operation::kQuery:
      case kmip::Operation::kDiscoverVersions:
        break;
      default:
        return false;
    }
  }
  return true;
}
}  // namespace

KmsCluster::Attempt KmsCluster::TryServer(size_t i, std::span<const kmip::RequestItem> items,
                                          bool continue_on_error, Exchange* ex) {
  ServerState& s = *states_[i];
  if (!s.conn.IsUsable()) {
    s.conn.Close();
    s.version.reset();
    auto c = client_.Connect(servers_[i].host, servers_[i].port);
    if (!c.ok()) {
      if (!IsTransportError(c.error())) return {AttemptResult::kFatal, std::move(c).error()};
      return {AttemptResult::kNotSent, std::move(c).error()};
    }
    s.conn = std::move(c).value();
    connections_made_++;
  }
  if (!s.version) {
    // Version negotiation once per connection. A server that does not
    // know DiscoverVersions (KMIP 1.0) gets the default, 1.2.
    kmip::RequestItem dv = kmip::MakeDiscoverVersions();
    kmip::RequestOptions o;
    o.version = kmip::ProtocolVersion{1, 0};
    auto req = kmip::EncodeRequest({&dv, 1}, o);
    if (!req.ok()) return {AttemptResult::kFatal, std::move(req).error()};
    messages_sent_++;
    auto bytes = s.conn.RoundTrip(req->message);
    if (!bytes.ok()) return {AttemptResult::kNotSent, std::move(bytes).error()};
    kmip::ProtocolVersion chosen = kmip::kDefaultVersion;
    auto resp = kmip::DecodeResponse(bytes->span());
    if (resp.ok()) {
      auto m = kmip::MatchResponse(*req, *resp);
      if (m.ok() && (*m)[0] != nullptr && (*m)[0]->ok()) {
        auto versions = kmip::ParseDiscoverVersions((*m)[0]);
        if (versions.ok() && !versions->empty()) {
          auto v = kmip::SelectVersion(*versions);
          if (!v.ok())
            return {AttemptResult::kFatal,
                    MakeError(ErrorCode::kKeyUnavailable,
                              "KMS " + servers_[i].ToString() + ": " + v.error().message)};
          chosen = *v;
        }
      }
    }
    s.version = chosen;
  }
  kmip::RequestOptions opts;
  opts.version = *s.version;
  if (continue_on_error)
    opts.batch_error_continuation = kmip::BatchErrorContinuationOption::kContinue;
  auto req = kmip::EncodeRequest(items, opts);
  if (!req.ok()) return {AttemptResult::kFatal, std::move(req).error()};
  ex->request = std::move(req).value();
  messages_sent_++;
  // Send and read separately: a failed send means the server cannot have
  // acted on the request (a partial message is never processed); a failed
  // read means it may have.
  if (auto st = s.conn.Send(ex->request.message); !st.ok())
    return {AttemptResult::kNotSent, std::move(st).error()};
  auto bytes = s.conn.ReadKmipMessage();
  if (!bytes.ok()) return {AttemptResult::kLostAfterSend, std::move(bytes).error()};
  const std::string addr = servers_[i].ToString();
  ex->response_bytes = std::move(bytes).value();
  auto resp = kmip::DecodeResponse(ex->response_bytes.span());
  if (!resp.ok()) {
    s.conn.Close();  // out of sync; the next request reconnects
    return {AttemptResult::kFatal,
            MakeError(ErrorCode::kKeyUnavailable,
                      "KMS " + addr + " sent a malformed response: " + resp.error().message)};
  }
  ex->response = std::move(resp).value();
  auto matched = kmip::MatchResponse(ex->request, ex->response);
  if (!matched.ok()) {
    s.conn.Close();
    return {AttemptResult::kFatal,
            MakeError(ErrorCode::kKeyUnavailable,
                      "KMS " + addr + " sent a mismatched response: " + matched.error().message)};
  }
  ex->matched = std::move(matched).value();
  ex->server = addr;
  return {AttemptResult::kOk, Error{}};
}

Result<std::unique_ptr<KmsCluster::Exchange>> KmsCluster::Execute(
    std::span<const kmip::RequestItem> items, bool continue_on_error) {
  const bool idempotent = Idempotent(items);
  std::string tried;
  for (size_t i = 0; i < servers_.size(); ++i) {
    ServerState& s = *states_[i];
    auto note = [&](const std::string& state, const std::string& err) {
      std::lock_guard lock(s.info_mu);
      if (s.state != state) s.since = NowRfc3339();
      s.state = state;
      s.last_error = err;
    };
    std::lock_guard lock(s.mu);
    // A reused connection may have been dropped silently (idle timeout, a
    // middlebox): one retry on a fresh connection to the same server.
    for (int round = 0; round < 2; ++round) {
      const bool reused = s.conn.IsUsable();
      auto ex = std::make_unique<Exchange>();
      Attempt a = TryServer(i, items, continue_on_error, ex.get());
      if (a.result == AttemptResult::kOk) {
        note("ok", "");
        return ex;
      }
      if (a.result == AttemptResult::kFatal) {
        note("error", a.error.message);
        return std::move(a.error);
      }
      s.conn.Close();
      s.version.reset();
      note("error", a.error.message);
      if (a.result == AttemptResult::kLostAfterSend && !idempotent) {
        // The server may have acted (e.g. created a key): sending it again,
        // here or elsewhere, could duplicate the effect.
        return MakeError(ErrorCode::kKeyUnavailable,
                         a.error.message + " after the request was sent; not retried because "
                                           "the operation is not idempotent");
      }
      if (reused && round == 0) continue;
      tried += (tried.empty() ? "" : "; ") + a.error.message;
      break;
    }
  }
  return MakeError(ErrorCode::kKeyUnavailable, "no KMS server reachable (tried " + tried + ")");
}

// --- StandardProvider -----------------------------------------------------------

StandardProvider::StandardProvider(std::string name, std::string dir,
                                   std::unique_ptr<KmsCluster> c)
    : name_(std::move(name)), dir_(std::move(dir)), cluster_(std::move(c)) {}

Result<std::unique_ptr<StandardProvider>> StandardProvider::Create(
    const std::string& name, const std::string& dir, const std::vector<KmsServer>& servers,
    const std::string& ca_pem, const std::string& cert_pem, const SecureBuffer& key_pem,
    StandardProviderOptions options) {
  if (servers.empty()) return MakeError(ErrorCode::kInvalidArgument, "no KMS server given");
  // Build everything in a staged dir and rename it into place only after
  // the cluster check passed: nothing half-made on any failure.
  VCRYPT_ASSIGN_OR_RETURN(StagedProviderDir staged, StagedProviderDir::Begin(dir));
  const std::string& tmp = staged.path();
  Json cfg = {{"version", kConfigVersion},
              {"type", "standard"},
              {"name", name},
              {"servers", Json::array()},
              {"connect_timeout_ms", options.connect_timeout.count()},
              {"io_timeout_ms", options.io_timeout.count()},
              {"created", NowRfc3339()}};
  for (const auto& s : servers) cfg["servers"].push_back(s.ToString());
  if (auto w = WriteFileAtomic(tmp + "/ca.pem", ca_pem); !w.ok()) return w.error();
  if (auto w = WriteFileAtomic(tmp + "/cert.pem", cert_pem); !w.ok()) return w.error();
  if (auto w = WriteFileAtomic(tmp + "/key.pem", key_pem.span()); !w.ok())
    return w.error();
  if (auto w = WriteFileAtomic(tmp + "/config.json", cfg.dump(2) + "\n"); !w.ok())
    return w.error();
  auto client = TlsClient::Create(MakeTlsConfig(tmp, options));
  if (!client.ok()) return std::move(client).error();
  auto cluster = std::make_unique<KmsCluster>(std::move(client).value(), servers);
  // The check: a DiscoverVersions round trip (the cluster negotiates the
  // version on first use, so a Query costs one more message; fine here).
  kmip::QueryFunction fns[] = {kmip::QueryFunction::kQueryOperations};
  kmip::RequestItem q = kmip::MakeQuery(fns);
  auto ex = cluster->Execute({&q, 1});
  if (!ex.ok())
    return MakeError(ErrorCode::kKeyUnavailable,
                     "KMS cluster check failed: " + ex.error().message);
  VCRYPT_RETURN_IF_ERROR(staged.Commit());
  // The TLS client was loaded from the temp paths; reload from the final
  // ones so later reconnects find the files.
  auto loaded = Load(name, dir);
  if (!loaded.ok()) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    return std::move(loaded).error();
  }
  return loaded;
}

Result<std::unique_ptr<StandardProvider>> StandardProvider::Load(const std::string& name,
                                                                 const std::string& dir) {
  VCRYPT_ASSIGN_OR_RETURN(Json cfg,
                          ReadProviderConfig(dir, "standard", kConfigVersion));
  auto bad = [&](const std::string& why) { return ProviderConfigError(dir, why); };
  if (!cfg.contains("servers") || !cfg["servers"].is_array()) return bad("no servers");
  std::string list;
  for (const auto& s : cfg["servers"]) {
    if (!s.is_string()) return bad("servers must be strings");
    list += (list.empty() ? "" : ",") + s.get<std::string>();
  }
  auto servers = ParseKmsServers(list);
  if (!servers.ok()) return bad(servers.error().message);
  StandardProviderOptions o;
  o.connect_timeout = std::chrono::milliseconds(cfg.value("connect_timeout_ms", 5000));
  o.io_timeout = std::chrono::milliseconds(cfg.value("io_timeout_ms", 10000));
  VCRYPT_ASSIGN_OR_RETURN(TlsClient client, TlsClient::Create(MakeTlsConfig(dir, o)));
  return std::unique_ptr<StandardProvider>(new StandardProvider(
      name, dir, std::make_unique<KmsCluster>(std::move(client), std::move(servers).value())));
}

Result<NewKek> StandardProvider::CreateKek(std::string_view vm) {
  kmip::RequestItem create = kmip::MakeCreateAes256("vcrypt-" + std::string(vm));
  VCRYPT_ASSIGN_OR_RETURN(auto ex, cluster_->Execute({&create, 1}));
  VCRYPT_ASSIGN_OR_RETURN(std::string uid, kmip::ParseCreate(ex->matched[0]));
  kmip::RequestItem next[] = {kmip::MakeActivate(uid), kmip::MakeGet(uid)};
  auto ex2 = cluster_->Execute(next);
  Result<SecureBuffer> key = MakeError(ErrorCode::kKeyUnavailable, "not fetched");
  if (ex2.ok()) {
    Status act = kmip::ParseActivate((*ex2)->matched[0], uid);
    if (!act.ok()) key = std::move(act).error();
    else key = kmip::ParseGetAes256((*ex2)->matched[1], uid);
  } else {
    key = std::move(ex2).error();
  }
  if (!key.ok()) {
    // Do not leave an orphan key on the KMS: a pre-active key can be
    // destroyed directly; an active one needs a Revoke first.
    kmip::RequestItem cleanup[] = {
        kmip::MakeRevoke(uid, kmip::RevocationReasonCode::kCessationOfOperation),
        kmip::MakeDestroy(uid)};
    (void)cluster_->Execute(cleanup, /*continue_on_error=*/true);
    return std::move(key).error();
  }
  NewKek nk;
  nk.ref.kek_id = uid;
  nk.kek = std::move(key).value();
  return nk;
}

std::vector<Result<SecureBuffer>> StandardProvider::FetchBatch(
    const std::vector<std::string>& uids) {
  std::vector<Result<SecureBuffer>> out;
  out.reserve(uids.size());
  static constexpr std::string_view kState[] = {"State"};
  for (size_t start = 0; start < uids.size(); start += kMaxBatchItems) {
    size_t n = std::min(kMaxBatchItems, uids.size() - start);
    // Per key a Get and a GetAttributes of its State, in one message: the
    // KMS hands out revoked (Deactivated, Compromised) keys on Get, but
    // vcrypt opens nothing under a key its KMS has revoked.
    std::vector<kmip::RequestItem> items;
    for (size_t i = 0; i < n; ++i) {
      items.push_back(kmip::MakeGet(uids[start + i]));
      items.push_back(kmip::MakeGetAttributes(uids[start + i], kState));
    }
    auto ex = cluster_->Execute(items, /*continue_on_error=*/true);
    for (size_t i = 0; i < n; ++i) {
      const std::string& uid = uids[start + i];
      auto fail = [&](Error e) {
        e.message = "KEK " + uid + " of provider '" + name_ + "': " + e.message;
        out.push_back(std::move(e));
      };
      if (!ex.ok()) {
        fail(ex.error());
        continue;
      }
      auto k = kmip::ParseGetAes256((*ex)->matched[2 * i], uid);
      if (!k.ok()) {
        fail(std::move(k).error());
        continue;
      }
      Status active = CheckActive((*ex)->matched[2 * i + 1]);
      if (!active.ok()) {
        fail(active.error());
        continue;
      }
      out.push_back(std::move(k).value());
    }
  }
  return out;
}

Status StandardProvider::CheckActive(const kmip::ResponseItem* item) {
  VCRYPT_ASSIGN_OR_RETURN(kmip::GetAttributesResult attrs,
                          kmip::ParseGetAttributes(item));
  VCRYPT_ASSIGN_OR_RETURN(kmip::KeyAttributes a,
                          kmip::SummarizeAttributes(attrs.attributes));
  if (!a.state)
    return MakeError(ErrorCode::kKeyUnavailable,
                     "the KMS did not say the key's State");
  if (*a.state == kmip::State::kActive) return Status::Ok();
  const bool revoked = *a.state == kmip::State::kDeactivated ||
                       *a.state == kmip::State::kCompromised;
  return MakeError(ErrorCode::kKeyUnavailable,
                   std::string(revoked ? "revoked" : "not active") +
                       " on the KMS (state " + kmip::StateName(*a.state) +
                       "); vcrypt uses only Active keys");
}

Result<SecureBuffer> StandardProvider::GetKek(const KekRef& ref) {
  if (ref.kek_id.empty())
    return MakeError(ErrorCode::kInvalidVolume, "the token names no KMS key");
  auto p = std::make_shared<Pending>();
  p->uid = ref.kek_id;
  auto fut = p->done.get_future();
  bool leader = false;
  {
    std::lock_guard lock(queue_mu_);
    queue_.push_back(p);
    if (!flushing_) flushing_ = leader = true;
  }
  if (leader) {
    // Drain the queue: whatever arrived while the previous message was in
    // flight leaves together in the next one.
    for (;;) {
      std::vector<std::shared_ptr<Pending>> batch;
      {
        std::lock_guard lock(queue_mu_);
        if (queue_.empty()) {
          flushing_ = false;
          break;
        }
        while (!queue_.empty() && batch.size() < kMaxBatchItems) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      std::vector<std::string> uids;
      for (const auto& b : batch) uids.push_back(b->uid);
      auto results = FetchBatch(uids);
      for (size_t i = 0; i < batch.size(); ++i) batch[i]->done.set_value(std::move(results[i]));
    }
  }
  return fut.get();
}

std::vector<Result<SecureBuffer>> StandardProvider::GetKeks(std::span<const KekRef> refs) {
  std::vector<std::string> uids;
  for (const auto& r : refs) uids.push_back(r.kek_id);
  return FetchBatch(uids);
}

Status StandardProvider::DestroyKek(const KekRef& ref) {
  kmip::RequestItem items[] = {
      kmip::MakeRevoke(ref.kek_id, kmip::RevocationReasonCode::kCessationOfOperation),
      kmip::MakeDestroy(ref.kek_id)};
  VCRYPT_ASSIGN_OR_RETURN(auto ex, cluster_->Execute(items));
  VCRYPT_RETURN_IF_ERROR(kmip::ParseRevoke(ex->matched[0], ref.kek_id));
  return kmip::ParseDestroy(ex->matched[1], ref.kek_id);
}

Json StandardProvider::Describe() const {
  Json servers = Json::array();
  for (const auto& s : cluster_->servers()) servers.push_back(s.ToString());
  return Json{{"name", name_},
              {"type", "standard"},
              {"servers", servers},
              {"server_states", cluster_->States()},
              {"kmip_messages_sent", cluster_->messages_sent()},
              {"tls_connections_made", cluster_->connections_made()}};
}

}  // namespace vcrypt
