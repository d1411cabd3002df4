#include "trustauthority/eventlog_policy.h"

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "common/hex.h"
#include "trustauthority/eventlog.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

// A PCR's rule (eventlog_policy.h).
struct PcrRule {
  enum Kind { kAllow, kValue, kAny } kind = kAllow;
  std::set<std::vector<uint8_t>> any_type;  // allow: digests for any type
  std::set<std::pair<uint32_t, std::vector<uint8_t>>> typed;  // allow
  std::vector<uint8_t> value;                                 // value
};

struct Baseline {
  std::optional<int64_t> expires;
  bool is_policy = false;
  Json values;                        // raw: the "values" array
  std::map<uint32_t, PcrRule> rules;  // policy: by PCR index
};

Error Invalid(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, what);
}

std::string Short(std::span<const uint8_t> digest) {
  const std::string h = HexEncode(digest);
  return h.size() > 16 ? h.substr(0, 16) + "..." : h;
}

uint16_t BankFromName(const std::string& name) {
  if (name == "sha1") return TPM2_ALG_SHA1;
  if (name == "sha256") return TPM2_ALG_SHA256;
  if (name == "sha384") return TPM2_ALG_SHA384;
  if (name == "sha512") return TPM2_ALG_SHA512;
  return 0;
}

Result<std::vector<uint8_t>> Digest(const Json& j, size_t size,
                                    const std::string& where) {
  if (!j.is_string()) return Invalid(where + ": a digest must be a hex string");
  auto d = HexDecode(j.get<std::string>());
  if (!d.ok() || d->size() != size)
    return Invalid(where + ": not " + std::to_string(size) + " bytes of hex");
  return std::move(d).value();
}

// PCR keys are canonical decimal numbers 0-23.
bool PcrKey(const std::string& key, uint32_t* pcr) {
  if (key.empty() || key.size() > 2 ||
      key.find_first_not_of("0123456789") != std::string::npos ||
      (key.size() == 2 && key[0] == '0'))
    return false;
  *pcr = static_cast<uint32_t>(std::stoul(key));
  return *pcr < 24;
}

Result<PcrRule> ParseRule(const Json& j, size_t digest_size,
                          const std::string& where, size_t* digests) {
  if (!j.is_object() || j.size() != 1)
    return Invalid(where +
                   ": must be an object with exactly one of allow, value, any");
  PcrRule r;
  if (j.contains("any")) {
    if (j["any"] != true) return Invalid(where + ": 'any' must be true");
    r.kind = PcrRule::kAny;
  } else if (j.contains("value")) {
    r.kind = PcrRule::kValue;
    VCRYPT_ASSIGN_OR_RETURN(r.value,
                            Digest(j["value"], digest_size, where + " value"));
  } else if (j.contains("allow")) {
    const Json& a = j["allow"];
    if (!a.is_array() || a.empty())
      return Invalid(where + ": 'allow' must be a non-empty array");
    *digests += a.size();
    if (*digests > kMaxPolicyDigests)
      return Invalid("more than " + std::to_string(kMaxPolicyDigests) +
                     " allowed digests");
    for (const Json& e : a) {
      if (e.is_string()) {
        VCRYPT_ASSIGN_OR_RETURN(auto d, Digest(e, digest_size, where));
        r.any_type.insert(std::move(d));
        continue;
      }
      if (!e.is_object() || e.size() != 2 || !e.contains("type") ||
          !e.contains("digest") || !e["type"].is_string())
        return Invalid(where +
                       ": an allowed entry is a hex digest or {\"type\": "
                       "name, \"digest\": hex}");
      uint32_t type = 0;
      if (!EventTypeFromName(e["type"].get<std::string>(), &type))
        return Invalid(where + ": unknown event type '" +
                       e["type"].get<std::string>().substr(0, 40) + "'");
      if (type == kEvNoAction)
        return Invalid(where + ": EV_NO_ACTION events are never extended");
      VCRYPT_ASSIGN_OR_RETURN(auto d, Digest(e["digest"], digest_size, where));
      r.typed.insert({type, std::move(d)});
    }
  } else {
    return Invalid(where + ": must be one of allow, value, any");
  }
  return r;
}

Result<Baseline> Parse(std::string_view body, const PcrSelection& selection) {
  if (body.size() > kMaxBaselineDocumentSize)
    return Invalid("the document exceeds " +
                   std::to_string(kMaxBaselineDocumentSize) + " bytes");
  Json j = Json::parse(body, nullptr, false);
  if (!j.is_object()) return Invalid("not a JSON object");
  Baseline b;
  for (const auto& [k, v] : j.items())
    if (k != "values" && k != "policy" && k != "expires")
      return Invalid("unknown member '" + k.substr(0, 40) + "'");
  if (j.contains("expires")) {
    if (!j["expires"].is_number_integer())
      return Invalid("'expires' must be unix seconds");
    b.expires = j["expires"].get<int64_t>();
  }
  if (j.contains("values") == j.contains("policy"))
    return Invalid("needs exactly one of 'values' (raw) and 'policy'");
  if (j.contains("values")) {
    if (!j["values"].is_array()) return Invalid("'values' must be an array");
    b.values = j["values"];
    return b;
  }
  b.is_policy = true;
  const Json& p = j["policy"];
  if (!p.is_object() || p.size() != 2 || !p.contains("bank") ||
      !p.contains("pcrs") || !p["bank"].is_string() || !p["pcrs"].is_object())
    return Invalid("'policy' must be {\"bank\": name, \"pcrs\": {...}}");
  const uint16_t bank = BankFromName(p["bank"].get<std::string>());
  if (bank == 0 || bank != selection.hash)
    return Invalid("policy bank '" +
                   p["bank"].get<std::string>().substr(0, 16) +
                   "' is not the service selection's");
  const size_t size = TpmHashSize(bank);
  size_t digests = 0;
  for (const auto& [key, rule] : p["pcrs"].items()) {
    uint32_t pcr = 0;
    if (!PcrKey(key, &pcr))
      return Invalid("policy PCR '" + key.substr(0, 8) +
                     "' is not a number 0-23");
    bool selected = false;
    for (uint32_t s : selection.pcrs) selected |= s == pcr;
    if (!selected)
      return Invalid("policy PCR " + key +
                     " is not in the service's PCR selection");
    VCRYPT_ASSIGN_OR_RETURN(
        PcrRule r, ParseRule(rule, size, "policy PCR " + key, &digests));
    b.rules.emplace(pcr, std::move(r));
  }
  for (uint32_t s : selection.pcrs)
    if (!b.rules.contains(s))
      return Invalid("policy has no rule for PCR " + std::to_string(s) +
                     " of the service's selection (use {\"any\": true} to "
                     "leave it unchecked)");
  return b;
}

bool RawMatches(const Json& vals,
                const std::vector<std::vector<uint8_t>>& quoted) {
  bool equal = vals.size() == quoted.size();
  for (size_t i = 0; equal && i < vals.size(); ++i)
    equal = vals[i].is_string() &&
            vals[i].get<std::string>() == HexEncode(quoted[i]);
  return equal;
}

// The parsed log, once it is known to replay to the quoted values.
struct CheckedLog {
  EventLog log;
};

Result<CheckedLog> CheckLog(std::optional<std::span<const uint8_t>> bytes,
                            const PcrSelection& selection,
                            const std::vector<std::vector<uint8_t>>& quoted) {
  if (!bytes)
    return MakeError(ErrorCode::kPermissionDenied,
                     "the host sent no event log");
  VCRYPT_ASSIGN_OR_RETURN(EventLog log, ParseEventLog(*bytes));
  VCRYPT_ASSIGN_OR_RETURN(auto replayed,
                          ReplayEventLog(log, selection.hash, selection.pcrs));
  if (replayed.size() != quoted.size())
    return MakeError(ErrorCode::kPermissionDenied,
                     "the quote does not hold one value per selected PCR");
  for (size_t i = 0; i < replayed.size(); ++i)
    if (replayed[i] != quoted[i])
      return MakeError(ErrorCode::kPermissionDenied,
                       "the event log does not replay to the quoted PCR " +
                           std::to_string(selection.pcrs[i]) + " (log " +
                           Short(replayed[i]) + ", quote " + Short(quoted[i]) +
                           ")");
  return CheckedLog{std::move(log)};
}

// "" when the policy holds, else why not.
std::string Evaluate(const Baseline& b, const CheckedLog& cl,
                     const PcrSelection& selection,
                     const std::vector<std::vector<uint8_t>>& quoted) {
  for (size_t i = 0; i < selection.pcrs.size(); ++i) {
    const uint32_t pcr = selection.pcrs[i];
    const PcrRule& r = b.rules.at(pcr);
    const std::string p = "PCR " + std::to_string(pcr);
    if (r.kind == PcrRule::kAny) continue;
    if (r.kind == PcrRule::kValue) {
      if (quoted[i] != r.value)
        return p + " is " + Short(quoted[i]) + ", not the policy's value " +
               Short(r.value);
      continue;
    }
    size_t extended = 0;
    for (const auto& e : cl.log.events) {
      if (e.pcr != pcr || e.type == kEvNoAction) continue;
      ++extended;
      const std::vector<uint8_t>* d = nullptr;
      for (const auto& x : e.digests)
        if (x.alg == selection.hash) d = &x.digest;
      if (d == nullptr)
        return p + " event " + std::to_string(e.index) +
               " has no digest of the policy's bank";
      if (!r.any_type.contains(*d) && !r.typed.contains({e.type, *d}))
        return p + " event " + std::to_string(e.index) + " (" +
               EventTypeName(e.type) + ") digest " + Short(*d) +
               " is not allowed";
    }
    if (extended == 0) return p + " has no event in the log";
  }
  return "";
}

}  // namespace

Status ValidateBaselineDocument(std::string_view body,
                                const PcrSelection& selection) {
  VCRYPT_ASSIGN_OR_RETURN(Baseline b, Parse(body, selection));
  if (!b.is_policy) {
    if (b.values.size() != selection.pcrs.size())
      return Invalid("a raw baseline needs " +
                     std::to_string(selection.pcrs.size()) + " PCR values");
    const size_t size = TpmHashSize(selection.hash);
    for (const Json& v : b.values) {
      auto d = Digest(v, size, "'values'");
      if (!d.ok()) return std::move(d).error();
      if (HexEncode(*d) != v.get<std::string>())
        return Invalid("'values' must be lower-case hex");
    }
  }
  return Status::Ok();
}

Result<std::string> MatchBaseline(
    const std::vector<BaselineDocument>& baselines,
    const PcrSelection& selection,
    const std::vector<std::vector<uint8_t>>& quoted,
    std::optional<std::span<const uint8_t>> event_log, int64_t now) {
  std::optional<Result<CheckedLog>> log;  // checked on first use
  std::string first_reason;
  size_t reasons = 0;
  auto note = [&](const std::string& name, const std::string& why) {
    if (reasons++ == 0) first_reason = "baseline '" + name + "': " + why;
  };
  for (const BaselineDocument& doc : baselines) {
    if (doc.expires && *doc.expires <= now) continue;
    auto b = Parse(doc.body, selection);
    if (!b.ok()) {
      note(doc.name, "invalid: " + b.error().message);
      continue;
    }
    if (b->expires && *b->expires <= now) continue;
    if (!b->is_policy) {
      if (RawMatches(b->values, quoted)) return doc.name;
      continue;
    }
    if (!log) log.emplace(CheckLog(event_log, selection, quoted));
    if (!log->ok()) {
      note(doc.name, log->error().message);
      continue;
    }
    const std::string why = Evaluate(*b, **log, selection, quoted);
    if (why.empty()) return doc.name;
    note(doc.name, why);
  }
  std::string msg = "no approved baseline matches";
  if (reasons > 0) {
    msg += " (" + first_reason;
    if (reasons > 1)
      msg += "; and " + std::to_string(reasons - 1) + " more not matching";
    msg += ")";
  }
  return MakeError(ErrorCode::kPermissionDenied, msg);
}

}  // namespace vcrypt
