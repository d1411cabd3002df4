// vcrypt-ta's command line, for the files that implement it (not an
// interface for anything else):
//   ta_tool.cc      dispatch, the helpers below, and ta_tool.h's parsers
//   ta_admin.cc     `vcrypt-ta admin ...`: the database
//   ta_services.cc  the two services' start-up: options, TLS, serving
#ifndef VCRYPT_TRUSTAUTHORITY_TA_TOOL_INTERNAL_H_
#define VCRYPT_TRUSTAUTHORITY_TA_TOOL_INTERNAL_H_

#include <boost/program_options.hpp>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"
#include "keyproviders/standard/standard_provider.h"
#include "taprotocol/jws.h"
#include "trustauthority/attestation.h"
#include "trustauthority/store.h"
#include "trustauthority/ta_tool.h"

namespace vcrypt::ta_tool_internal {

namespace po = boost::program_options;
namespace fs = std::filesystem;
using Json = nlohmann::json;

// The state directory's database (sqlite:DIR/ta.db), and the files of the
// file store that `admin import-files` reads (versions before the
// database).
inline constexpr const char* kDatabaseFile = "ta.db";
inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kSigningKeyFile = "signing-key.pem";
inline constexpr int kConfigVersion = 1;
inline constexpr const char* kDefaultPcrs = "sha256:0,1,2,3,4,5,6,7";
inline constexpr const char* kDefaultPrimaryKeyName = "vcrypt-ta-primary";
// Our request bodies are a few KiB (a quote, a token, a ciphertext),
// except /v1/attest with a firmware event log (up to kMaxEventLogSize,
// 1 MiB, as base64: 1.34 MiB); anything larger is refused before it is
// parsed.
inline constexpr size_t kMaxRequestBody = 1536 * 1024;
// Worker threads of each service (see Serve).
inline constexpr size_t kWorkerThreads = 64;
inline constexpr size_t kPrimaryKeySize = 32;

Error UsageError(const std::string& msg);

struct Parsed {
  std::vector<std::string> words;
  po::variables_map vm;

  bool has(const char* name) const { return vm.count(name) > 0; }
  std::string get(const char* name) const {
    return has(name) ? vm[name].as<std::string>() : std::string();
  }
};

Result<Parsed> Parse(const std::vector<std::string>& args,
                     const po::options_description& opts,
                     const std::string& what);
// The value of --option, which `what` requires.
Result<std::string> Need(const Parsed& p, const char* option,
                         const std::string& what);
// Only the options in `allowed` may be given to `what`.
Status OnlyOptions(const Parsed& p, const std::set<std::string>& allowed,
                   const std::string& what);
// Host and baseline names (the service's rule: they become file names).
Status CheckName(const std::string& what, const std::string& name);
bool Exists(const std::string& path);
// The OpenSSL error queue as one line (and cleared).
std::string OpensslError();

// The database a command works on: --db URL if given, else sqlite:DIR/ta.db
// for --state DIR; kUsage without either or for a bad URL.
Result<std::string> StoreUrlOf(const Parsed& p, const std::string& what);
// Opens an initialised store: a SQLite file that does not exist is
// kNotFound (and is not made).
Result<std::shared_ptr<TaStore>> OpenExistingStore(const std::string& url);
// The store's settings (PCR selection, issuer, audience), its active
// signing key, and the attestation service over them.
Result<AttestationConfig> LoadConfig(std::shared_ptr<TaStore> store);
Result<EcSigningKey> LoadSigningKey(TaStore& store);
Result<AttestationService> OpenAttestation(std::shared_ptr<TaStore> store,
                                           size_t max_outstanding = 10000);

struct KmsOptions {
  std::string servers, ca, cert, key;
};

Result<std::unique_ptr<KmsCluster>> MakeCluster(const KmsOptions& o);
Result<KmsOptions> NeedKms(const Parsed& p, const std::string& what);
void AddKmsOptions(po::options_description& d);

// The commands.
Status AdminCmd(const std::vector<std::string>& args, std::ostream& out);
Status AttestationServiceCmd(const std::vector<std::string>& args,
                             std::ostream& out, ServiceControl& control);
Status KeyProviderServiceCmd(const std::vector<std::string>& args,
                             std::ostream& out, ServiceControl& control);

}  // namespace vcrypt::ta_tool_internal

#endif  // VCRYPT_TRUSTAUTHORITY_TA_TOOL_INTERNAL_H_
