#include "dmtools/token.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/names.h"

namespace vcrypt {
namespace {

using nlohmann::json;

// Messages are one line for an administrator; values copied from a
// (possibly hostile) header are shortened and stripped of control bytes.
std::string Printable(std::string_view s, size_t max = 200) {
  std::string out;
  for (char c : s.substr(0, max)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (s.size() > max) out += "...";
  return out;
}

Error Invalid(const std::string& what) {
  return MakeError(
      ErrorCode::kInvalidVolume,
      "invalid vcrypt token in the LUKS2 header: " + Printable(what, 400));
}

// The JSON type names used in messages ("expected a string, got a number").
std::string TypeName(const json& j) { return j.type_name(); }

// Refuses members other than `allowed`: the format is versioned, so a
// member this version does not know means the token is not what we think.
Status OnlyMembers(const json& obj, const std::string& where,
                   std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : obj.items()) {
    bool known = false;
    for (std::string_view a : allowed) known = known || key == a;
    if (!known) {
      return Invalid("unknown member '" + where + Printable(key, 64) + "'");
    }
  }
  return Status::Ok();
}

Result<const json*> Member(const json& obj, const std::string& where,
                           const char* key) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    return Invalid("member '" + where + key + "' is missing");
  }
  return &*it;
}

Result<std::string> StringMember(const json& obj, const std::string& where,
                                 const char* key) {
  VCRYPT_ASSIGN_OR_RETURN(const json* v, Member(obj, where, key));
  if (!v->is_string()) {
    return Invalid("member '" + where + key + "' must be a string, not " +
                   TypeName(*v));
  }
  return v->get<std::string>();
}

Result<const json*> ObjectMember(const json& obj, const std::string& where,
                                 const char* key) {
  VCRYPT_ASSIGN_OR_RETURN(const json* v, Member(obj, where, key));
  if (!v->is_object()) {
    return Invalid("member '" + where + key + "' must be an object, not " +
                   TypeName(*v));
  }
  return v;
}

// Turns a name-validation failure (kInvalidArgument, meant for CLI input)
// into a token error.
Status NameCheck(Status st) {
  if (st.ok()) return st;
  return Invalid(st.error().message);
}

// nlohmann keeps the last of duplicate members silently; a token with
// duplicates is ambiguous (another reader may keep the first), so the
// parser callback records them and Parse refuses the token.
struct DuplicateTracker {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool found = false;
};

Result<VcryptToken> ParseImpl(std::string_view text) {
  if (text.size() > kMaxTokenSize) {
    return Invalid("it is " + std::to_string(text.size()) +
                   " bytes, more than the " + std::to_string(kMaxTokenSize) +
                   " allowed");
  }
  DuplicateTracker dups;
  json::parser_callback_t cb = [&dups](int /*depth*/, json::parse_event_t ev,
                                       json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        dups.open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!dups.open_objects.empty()) dups.open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!dups.open_objects.empty() && parsed.is_string() &&
            !dups.open_objects.back()
                 .insert(parsed.get<std::string>())
                 .second &&
            !dups.found) {
          dups.found = true;
          dups.duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json j = json::parse(text.begin(), text.end(), cb,
                       /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid("it is not well-formed JSON");
  if (dups.found) {
    return Invalid("member '" + Printable(dups.duplicate, 64) +
                   "' appears more than once");
  }
  if (!j.is_object()) return Invalid("it is not a JSON object");

  // Type and version first, so that a token of a newer vcrypt is reported
  // as such rather than as "unknown member ...".
  VCRYPT_ASSIGN_OR_RETURN(std::string type, StringMember(j, "", "type"));
  if (type != kTokenType) {
    return Invalid("type is '" + Printable(type, 64) + "', expected '" +
                   std::string(kTokenType) + "'");
  }
  VCRYPT_ASSIGN_OR_RETURN(const json* ver, Member(j, "", "vcrypt_version"));
  if (!ver->is_number_integer()) {
    return Invalid("member 'vcrypt_version' must be an integer, not " +
                   TypeName(*ver));
  }
  bool supported =
      ver->is_number_unsigned()
          ? ver->get<uint64_t>() == static_cast<uint64_t>(kTokenVersion)
          : ver->get<int64_t>() == kTokenVersion;
  if (!supported) {
    return MakeError(ErrorCode::kInvalidVolume,
                     "unsupported vcrypt token version " + ver->dump() +
                         " (this vcryptd supports " +
                         std::to_string(kTokenVersion) + "); upgrade vcrypt");
  }
  VCRYPT_RETURN_IF_ERROR(OnlyMembers(j, "",
                                     {"type", "keyslots", "vcrypt_version",
                                      "vm", "disk", "provider", "kek", "dek"}));

  VCRYPT_ASSIGN_OR_RETURN(const json* keyslots, Member(j, "", "keyslots"));
  if (!keyslots->is_array() || !keyslots->empty()) {
    // A vcrypt token is never bound to a keyslot: the DEK is the volume
    // key itself, not a keyslot passphrase.
    return Invalid("member 'keyslots' must be an empty array");
  }

  VcryptToken t;
  t.version = kTokenVersion;
  VCRYPT_ASSIGN_OR_RETURN(t.vm, StringMember(j, "", "vm"));
  VCRYPT_ASSIGN_OR_RETURN(t.disk, StringMember(j, "", "disk"));
  VCRYPT_RETURN_IF_ERROR(NameCheck(ValidateVolumeNames(t.vm, t.disk)));

  VCRYPT_ASSIGN_OR_RETURN(const json* provider,
                          ObjectMember(j, "", "provider"));
  VCRYPT_RETURN_IF_ERROR(OnlyMembers(*provider, "provider.", {"name", "type"}));
  VCRYPT_ASSIGN_OR_RETURN(t.provider_name,
                          StringMember(*provider, "provider.", "name"));
  VCRYPT_RETURN_IF_ERROR(NameCheck(ValidateProviderName(t.provider_name)));
  VCRYPT_ASSIGN_OR_RETURN(t.provider_type,
                          StringMember(*provider, "provider.", "type"));
  if (t.provider_type != "native" && t.provider_type != "standard" &&
      t.provider_type != "trusted") {
    return Invalid("provider type '" + Printable(t.provider_type, 64) +
                   "' is not one of native, standard, trusted");
  }

  VCRYPT_ASSIGN_OR_RETURN(const json* kek, ObjectMember(j, "", "kek"));
  VCRYPT_RETURN_IF_ERROR(OnlyMembers(*kek, "kek.", {"id", "data"}));
  VCRYPT_ASSIGN_OR_RETURN(t.kek.kek_id, StringMember(*kek, "kek.", "id"));
  if (t.kek.kek_id.empty() || t.kek.kek_id.size() > kMaxKekIdLength) {
    return Invalid("member 'kek.id' must be 1 to " +
                   std::to_string(kMaxKekIdLength) + " bytes long");
  }
  VCRYPT_ASSIGN_OR_RETURN(const json* data, ObjectMember(*kek, "kek.", "data"));
  t.kek.data = *data;

  VCRYPT_ASSIGN_OR_RETURN(const json* dek, ObjectMember(j, "", "dek"));
  auto wrapped = WrappedKey::FromJson(*dek);
  if (!wrapped.ok()) {
    return Invalid("member 'dek': " + wrapped.error().message);
  }
  t.dek = std::move(wrapped).value();
  return t;
}

}  // namespace

std::string VcryptToken::ToJsonString() const {
  json j = json::object();
  j["type"] = kTokenType;
  j["keyslots"] = json::array();
  j["vcrypt_version"] = version;
  j["vm"] = vm;
  j["disk"] = disk;
  j["provider"] = {{"name", provider_name}, {"type", provider_type}};
  j["kek"] = {{"id", kek.kek_id}, {"data", kek.data}};
  j["dek"] = dek.ToJson();
  // Invalid UTF-8 in a string member is replaced rather than thrown on:
  // Parse then refuses the names, and nothing throws across the boundary.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<VcryptToken> VcryptToken::Parse(std::string_view json_text) {
  // Nothing in ParseImpl is expected to throw (the parser runs with
  // exceptions off and every access is type-checked first); this is the
  // backstop that keeps exceptions from crossing the library boundary.
  try {
    return ParseImpl(json_text);
  } catch (const std::exception& e) {
    return Invalid(std::string("it could not be decoded (") + e.what() + ")");
  } catch (...) {
    return Invalid("it could not be decoded");
  }
}

}  // namespace vcrypt
