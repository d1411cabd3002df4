// vcrypt-ta: dispatch to its commands (trustauthority/ta_tool_internal.h),
// the helpers they share, and the parsers of ta_tool.h.
#include "trustauthority/ta_tool.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <set>

#include "common/atomic_file.h"
#include "common/clock.h"
#include "common/handles.h"
#include "common/hex.h"
#include "keyproviders/standard/kmip.h"
#include "keyproviders/standard/standard_provider.h"
#include "keyproviders/standard/tls_client.h"
#include "taprotocol/jws.h"
#include "trustauthority/attestation.h"
#include "trustauthority/kps.h"
#include "trustauthority/ta_tool_internal.h"

namespace vcrypt {
namespace ta_tool_internal {
namespace {

constexpr const char* kUsage =
    R"(Usage: vcrypt-ta COMMAND ...   (docs/trusted-admin.md)

Administration (DB: --state DIR, the SQLite database DIR/ta.db, or
--db URL: sqlite:PATH, postgresql://HOST/DB or a libpq key=value string,
never with a password: use ~/.pgpass, PGPASSFILE or a service file):
  admin DB init [--pcrs sha256:0,1,2,3,4,5,6,7]
  admin DB tpm-ca add FILE
  admin DB host add NAME [--ek-pub FILE]
  admin DB host remove NAME
  admin DB baseline add NAME (--values FILE | --policy FILE)
                               [--expires-in DURATION]
  admin DB baseline policy-from-log --log FILE
  admin DB baseline remove NAME
  admin DB list [--json]
  admin --state OLD_DIR --db URL import-files
  admin primary-key create --kms HOST:PORT[,...] --kms-ca FILE
                           --kms-cert FILE --kms-key FILE [--name NAME]
Services (foreground; stop with SIGTERM or SIGINT):
  attestation-service DB --listen HOST:PORT --tls-cert FILE
                      --tls-key FILE [--max-outstanding N (10000)]
                      [--rate-limit PER_SECOND (50; 0: off)]
                      [--rate-burst N (100)]
  key-provider-service DB --listen HOST:PORT --tls-cert FILE
                       --tls-key FILE --provider-id ID
                       (--primary-key UID --kms HOST:PORT[,...] --kms-ca FILE
                        --kms-cert FILE --kms-key FILE
                        | --primary-key-file FILE)
  Both services also take [--max-client-connections N (16)]
  [--max-connection-seconds S (30)]: connections one client address (IPv6:
  its /64) may hold at once, and the longest any connection lives.

Exit codes: 0 ok, 1 internal, 2 usage, 4 permission denied, 5 not found,
6 exists, 8 key unavailable (KMS), 11 I/O error, 12 invalid argument,
13 crypto failure.
)";

}  // namespace

Error UsageError(const std::string& msg) {
  return MakeError(ErrorCode::kUsage, msg + " (see 'vcrypt-ta --help')");
}

// --- command-line parsing --------------------------------------------------

Result<Parsed> Parse(const std::vector<std::string>& args,
                     const po::options_description& opts,
                     const std::string& what) {
  Parsed p;
  po::options_description all;
  all.add(opts);
  all.add_options()("word", po::value<std::vector<std::string>>(&p.words));
  po::positional_options_description pos;
  pos.add("word", -1);
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(),
              p.vm);
    po::notify(p.vm);
  } catch (const po::error& e) {
    return UsageError(what + ": " + e.what());
  }
  return p;
}

Result<std::string> Need(const Parsed& p, const char* option,
                         const std::string& what) {
  std::string v = p.get(option);
  if (v.empty()) return UsageError(what + ": --" + option + " is required");
  return v;
}

// Only the options in `allowed` may be given to `what`.
Status OnlyOptions(const Parsed& p, const std::set<std::string>& allowed,
                   const std::string& what) {
  for (const auto& [name, value] : p.vm) {
    if (name == "word" || value.defaulted() || allowed.count(name)) continue;
    return UsageError(what + ": --" + name + " does not apply here");
  }
  return Status::Ok();
}

// Host and baseline names (the same rule as the service's, which makes
// them file names); checked here too so that the existence checks below
// never look at a path built from a bad name.
Status CheckName(const std::string& what, const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS"
                             "TUVWXYZ0123456789._-") != std::string::npos)
    return MakeError(
        ErrorCode::kInvalidArgument,
        "invalid " + what + " name '" + name.substr(0, 64) +
            "' (1-64 of A-Z a-z 0-9 . _ -, not starting with '.')");
  return Status::Ok();
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

std::string OpensslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

// --- the database ------------------------------------------------------------

Result<std::string> StoreUrlOf(const Parsed& p, const std::string& what) {
  // --db wins: with it, the state directory holds nothing of the Trust
  // Authority's (the systemd units pass --state; replicas on PostgreSQL
  // add --db to their options).
  if (p.has("db")) {
    const std::string url = p.get("db");
    auto st = CheckStoreUrl(url);
    if (!st.ok()) return UsageError(what + ": --db: " + st.error().message);
    return url;
  }
  if (!p.has("state") || p.get("state").empty())
    return UsageError(what + ": --state DIR or --db URL is required");
  return DefaultStoreUrl(p.get("state"));
}

Result<std::shared_ptr<TaStore>> OpenExistingStore(const std::string& url) {
  if (!IsPostgresUrl(url)) {
    const std::string path = url.substr(std::string_view("sqlite:").size());
    if (!Exists(path))
      return MakeError(ErrorCode::kNotFound,
                       path +
                           " does not exist: not an initialised Trust "
                           "Authority (run 'vcrypt-ta admin ... init')");
  }
  return OpenTaStore(url);
}

Result<AttestationConfig> LoadConfig(std::shared_ptr<TaStore> store) {
  VCRYPT_ASSIGN_OR_RETURN(std::optional<std::string> pcrs,
                          store->GetSetting("pcrs"));
  if (!pcrs)
    return MakeError(ErrorCode::kNotFound,
                     "the database " + store->url() +
                         " is not an initialised Trust Authority (run "
                         "'vcrypt-ta admin ... init')");
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the database " + store->url() + ": " + why);
  };
  auto sel = ParsePcrSelection(*pcrs);
  if (!sel.ok()) return bad(sel.error().message);
  AttestationConfig c;
  c.selection = std::move(sel).value();
  VCRYPT_ASSIGN_OR_RETURN(std::optional<std::string> issuer,
                          store->GetSetting("issuer"));
  if (issuer) c.issuer = *issuer;
  VCRYPT_ASSIGN_OR_RETURN(std::optional<std::string> audience,
                          store->GetSetting("audience"));
  if (audience) c.audience = *audience;
  c.store = std::move(store);
  return c;
}

Result<EcSigningKey> LoadSigningKey(TaStore& store) {
  VCRYPT_ASSIGN_OR_RETURN(std::vector<SigningKeyInfo> keys,
                          store.SigningKeys());
  // The newest active key signs (one until rotation exists).
  const SigningKeyInfo* active = nullptr;
  for (const auto& k : keys)
    if (k.state == "active") active = &k;
  if (active == nullptr)
    return MakeError(
        ErrorCode::kNotFound,
        "the database " + store.url() + " holds no active token signing key");
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pem,
                          store.SigningKeyPrivate(active->kid));
  auto key = EcSigningKey::FromPrivatePem(pem);
  if (!key.ok())
    return MakeError(key.error().code, "token signing key " + active->kid +
                                           ": " + key.error().message);
  if (key->Thumbprint() != active->kid)
    return MakeError(ErrorCode::kIo, "token signing key " + active->kid +
                                         ": the key does not match its kid "
                                         "(damaged state)");
  return key;
}

Result<AttestationService> OpenAttestation(std::shared_ptr<TaStore> store,
                                           size_t max_outstanding) {
  VCRYPT_ASSIGN_OR_RETURN(EcSigningKey key, LoadSigningKey(*store));
  VCRYPT_ASSIGN_OR_RETURN(AttestationConfig config,
                          LoadConfig(std::move(store)));
  config.max_outstanding = max_outstanding;
  return AttestationService::Open(std::move(config), std::move(key));
}

// --- KMS -------------------------------------------------------------------

Result<std::unique_ptr<KmsCluster>> MakeCluster(const KmsOptions& o) {
  VCRYPT_ASSIGN_OR_RETURN(std::vector<KmsServer> servers,
                          ParseKmsServers(o.servers));
  TlsConfig c;
  c.ca_file = o.ca;
  c.cert_file = o.cert;
  c.key_file = o.key;
  c.connect_timeout = std::chrono::milliseconds(5000);
  c.io_timeout = std::chrono::milliseconds(10000);
  VCRYPT_ASSIGN_OR_RETURN(TlsClient client, TlsClient::Create(c));
  return std::make_unique<KmsCluster>(std::move(client), std::move(servers));
}

Result<KmsOptions> NeedKms(const Parsed& p, const std::string& what) {
  KmsOptions o;
  VCRYPT_ASSIGN_OR_RETURN(o.servers, Need(p, "kms", what));
  VCRYPT_ASSIGN_OR_RETURN(o.ca, Need(p, "kms-ca", what));
  VCRYPT_ASSIGN_OR_RETURN(o.cert, Need(p, "kms-cert", what));
  VCRYPT_ASSIGN_OR_RETURN(o.key, Need(p, "kms-key", what));
  return o;
}

void AddKmsOptions(po::options_description& d) {
  d.add_options()("kms", po::value<std::string>())(
      "kms-ca", po::value<std::string>())("kms-cert", po::value<std::string>())(
      "kms-key", po::value<std::string>());
}

}  // namespace ta_tool_internal

using ta_tool_internal::kUsage;
using ta_tool_internal::UsageError;

// --- ServiceControl ----------------------------------------------------------

void ServiceControl::Stop() {
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

void ServiceControl::Notify() {
  // Taking the lock orders the caller's state change before the waiter's
  // re-check (no lost wake-up).
  { std::lock_guard lock(mu_); }
  cv_.notify_all();
}

bool ServiceControl::stopped() {
  std::lock_guard lock(mu_);
  return stopped_;
}

void ServiceControl::WaitUntil(const std::function<bool()>& done) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return stopped_ || done(); });
}

// --- exposed pieces
// ------------------------------------------------------------

Result<PcrSelection> ParsePcrSelection(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "bad PCR selection '" + std::string(text.substr(0, 80)) +
                         "': " + why + " (e.g. sha256:0,1,2,3,4,5,6,7)");
  };
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) return bad("no bank");
  if (text.substr(0, colon) != "sha256")
    return bad("only the sha256 bank is supported");
  std::string_view list = text.substr(colon + 1);
  std::set<uint32_t> pcrs;
  auto number = [](std::string_view s, uint32_t* v) {
    if (s.empty() || s.size() > 2) return false;
    *v = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      *v = *v * 10 + static_cast<uint32_t>(c - '0');
    }
    return *v <= 23;
  };
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view item = list.substr(pos, comma - pos);
    size_t dash = item.find('-');
    uint32_t lo, hi;
    if (dash == std::string_view::npos) {
      if (!number(item, &lo)) return bad("PCRs are numbers 0-23");
      hi = lo;
    } else if (!number(item.substr(0, dash), &lo) ||
               !number(item.substr(dash + 1), &hi) || lo > hi) {
      return bad("bad range '" + std::string(item) + "'");
    }
    for (uint32_t i = lo; i <= hi; ++i)
      if (!pcrs.insert(i).second)
        return bad("PCR " + std::to_string(i) + " given twice");
    pos = comma + 1;
  }
  return PcrSelection{TPM2_ALG_SHA256, {pcrs.begin(), pcrs.end()}};
}

std::string FormatPcrSelection(const PcrSelection& s) {
  std::string out = s.hash == TPM2_ALG_SHA256 ? "sha256:" : "?:";
  for (size_t i = 0; i < s.pcrs.size(); ++i)
    out += (i ? "," : "") + std::to_string(s.pcrs[i]);
  return out;
}

Result<std::vector<std::vector<uint8_t>>> ParseBaselineValues(
    std::string_view text, const PcrSelection& selection) {
  std::vector<std::vector<uint8_t>> values;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line[0])))
      line.remove_prefix(1);
    while (!line.empty() &&
           std::isspace(static_cast<unsigned char>(line.back())))
      line.remove_suffix(1);
    if (line.empty() || line[0] == '#') continue;
    const std::string where = "line " + std::to_string(line_no);
    if (line.size() % 2 != 0)
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": not a hex digest (odd length)");
    auto decoded = HexDecode(line);
    if (!decoded.ok())
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": not a hex digest");
    std::vector<uint8_t> v = std::move(decoded).value();
    if (v.size() != 32)
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": " + std::to_string(v.size()) +
                           " bytes; a sha256 PCR value has 32");
    values.push_back(std::move(v));
  }
  if (values.size() != selection.pcrs.size())
    return MakeError(
        ErrorCode::kInvalidArgument,
        std::to_string(values.size()) + " values for the " +
            std::to_string(selection.pcrs.size()) + " PCRs of the selection " +
            FormatPcrSelection(selection) + " (one per line, in that order)");
  return values;
}

Result<ListenAddress> ParseListenAddress(std::string_view text) {
  auto bad = [&] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "bad listen address '" + std::string(text.substr(0, 80)) +
                         "' (use HOST:PORT or [IPV6]:PORT; port 0 = any)");
  };
  ListenAddress a;
  size_t colon;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() ||
        text[close + 1] != ':')
      return bad();
    a.host = std::string(text.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon)
      return bad();
    a.host = std::string(text.substr(0, colon));
  }
  std::string_view port = text.substr(colon + 1);
  if (a.host.empty() || port.empty() || port.size() > 5) return bad();
  unsigned p = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return bad();
    p = p * 10 + static_cast<unsigned>(c - '0');
  }
  if (p > 65535) return bad();
  a.port = static_cast<uint16_t>(p);
  for (char c : a.host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
          c == ':' || c == '_'))
      return bad();
  return a;
}

Result<std::vector<uint8_t>> NormalizeEkPublic(std::vector<uint8_t> bytes) {
  auto first = ParseTpm2bPublic(bytes);
  if (first.ok()) return bytes;
  if (!bytes.empty() && bytes.size() <= 0xffff) {
    std::vector<uint8_t> sized = {static_cast<uint8_t>(bytes.size() >> 8),
                                  static_cast<uint8_t>(bytes.size() & 0xff)};
    sized.insert(sized.end(), bytes.begin(), bytes.end());
    if (ParseTpm2bPublic(sized).ok()) return sized;
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "neither a TPM2B_PUBLIC nor a TPMT_PUBLIC (" +
                       first.error().message + ")");
}

Result<SecureBuffer> ReadOwnerOnlyFile(const std::string& path,
                                       const std::string& what,
                                       size_t max_size) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid())
    return MakeError(
        errno == ENOENT   ? ErrorCode::kNotFound
        : errno == EACCES ? ErrorCode::kPermissionDenied
                          : ErrorCode::kIo,
        "cannot open " + what + " " + path + ": " + std::strerror(errno));
  struct stat st;
  if (fstat(fd.get(), &st) != 0)
    return MakeError(ErrorCode::kIo, "cannot stat " + what + " " + path + ": " +
                                         std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    return MakeError(ErrorCode::kInvalidArgument,
                     what + " " + path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o",
                  static_cast<unsigned>(st.st_mode & 07777));
    return MakeError(ErrorCode::kPermissionDenied,
                     what + " " + path + " has mode " + mode +
                         ": it must be readable by its owner only (chmod "
                         "600)");
  }
  SecureBuffer buf(max_size + 1);
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd.get(), buf.data() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      return MakeError(ErrorCode::kIo, "cannot read " + what + " " + path +
                                           ": " + std::strerror(errno));
    if (r == 0) break;
    got += static_cast<size_t>(r);
    if (got == buf.size())
      return MakeError(ErrorCode::kInvalidArgument,
                       what + " " + path + " is too large");
  }
  buf.Truncate(got);
  if (buf.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     what + " " + path + " is empty");
  return buf;
}

Result<SecureBuffer> FetchPrimaryKey(KmsCluster& cluster,
                                     const std::string& uid) {
  auto fail = [&](const Error& e) {
    return MakeError(e.code, "cannot fetch the primary key '" + uid +
                                 "' from the KMS: " + e.message);
  };
  if (uid.empty())
    return MakeError(ErrorCode::kInvalidArgument, "empty primary key UID");
  kmip::RequestItem get = kmip::MakeGet(uid);
  auto ex = cluster.Execute({&get, 1});
  if (!ex.ok()) return fail(ex.error());
  auto key = kmip::ParseGetAes256((*ex)->matched[0], uid);
  if (!key.ok()) return fail(key.error());
  return key;
}

Result<std::string> CreatePrimaryKey(KmsCluster& cluster,
                                     const std::string& name) {
  // The same sequence as StandardProvider::CreateKek: Create, then
  // Activate + Get (the Get proves the key is usable as a primary key).
  kmip::RequestItem create = kmip::MakeCreateAes256(name);
  auto ex = cluster.Execute({&create, 1});
  if (!ex.ok())
    return MakeError(ex.error().code,
                     "cannot create the primary key: " + ex.error().message);
  auto uid = kmip::ParseCreate((*ex)->matched[0]);
  if (!uid.ok())
    return MakeError(uid.error().code,
                     "cannot create the primary key: " + uid.error().message);
  kmip::RequestItem next[] = {kmip::MakeActivate(*uid), kmip::MakeGet(*uid)};
  auto ex2 = cluster.Execute(next);
  Status st;
  if (!ex2.ok()) {
    st = ex2.error();
  } else if (auto act = kmip::ParseActivate((*ex2)->matched[0], *uid);
             !act.ok()) {
    st = std::move(act);
  } else if (auto key = kmip::ParseGetAes256((*ex2)->matched[1], *uid);
             !key.ok()) {
    st = key.error();
  }
  if (!st.ok()) {
    // No orphan key on the KMS (an active key needs a Revoke first).
    kmip::RequestItem cleanup[] = {
        kmip::MakeRevoke(*uid,
                         kmip::RevocationReasonCode::kCessationOfOperation),
        kmip::MakeDestroy(*uid)};
    (void)cluster.Execute(cleanup, /*continue_on_error=*/true);
    return MakeError(st.error().code, "cannot activate the new primary key " +
                                          *uid + ": " + st.error().message);
  }
  return uid;
}

int RunTaTool(int argc, const char* const* argv, std::ostream& out,
              std::ostream& err, ServiceControl* control) {
  std::vector<std::string> args;
  for (int i = 2; i < argc; ++i) args.emplace_back(argv[i]);
  const std::string cmd = argc >= 2 ? argv[1] : "";
  ServiceControl never_stopped;
  ServiceControl& ctl = control != nullptr ? *control : never_stopped;
  if (cmd == "--help" || cmd == "-h" || cmd == "help" ||
      std::find(args.begin(), args.end(), "--help") != args.end()) {
    out << kUsage;
    return 0;
  }
  Status st;
  if (cmd.empty()) {
    st = UsageError("no command given");
  } else if (cmd == "admin") {
    st = ta_tool_internal::AdminCmd(args, out);
  } else if (cmd == "attestation-service") {
    st = ta_tool_internal::AttestationServiceCmd(args, out, ctl);
  } else if (cmd == "key-provider-service") {
    st = ta_tool_internal::KeyProviderServiceCmd(args, out, ctl);
  } else {
    st = UsageError("unknown command '" + cmd + "'");
  }
  if (st.ok()) return 0;
  err << "vcrypt-ta: " << st.error().message << std::endl;
  return static_cast<int>(st.error().code);
}

}  // namespace vcrypt
