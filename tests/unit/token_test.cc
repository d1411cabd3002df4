// Unit tests for the vcrypt LUKS2 token codec (dmtools/token.h).
#include "dmtools/token.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/aead.h"
#include "common/random.h"

namespace vcrypt {
namespace {

using nlohmann::json;

constexpr char kUuid[] = "0b5c6f7e-6d3a-4c1e-9e7f-2a1b3c4d5e6f";

VcryptToken SampleToken() {
  VcryptToken t;
  t.vm = "web-01";
  t.disk = "disk0";
  t.provider_name = "kms-prod";
  t.provider_type = "standard";
  t.kek.kek_id = "6f1d2c3b-kmip-uid-42";
  t.kek.data = json::object({{"ciphertext", "AAECAw=="}, {"n", 3}});
  auto kek = RandomKey(32);
  auto dek = RandomKey(64);
  EXPECT_TRUE(kek.ok() && dek.ok());
  auto w = WrapKey(*kek, *dek, DekAad(kUuid, t.kek.kek_id, t.provider_name));
  EXPECT_TRUE(w.ok());
  t.dek = std::move(w).value();
  return t;
}

json SampleJson() { return json::parse(SampleToken().ToJsonString()); }

// Parses `j` and expects a kInvalidVolume error whose one-line message
// contains `needle`.
void ExpectRejected(const std::string& text, const std::string& needle) {
  auto r = VcryptToken::Parse(text);
  ASSERT_FALSE(r.ok()) << "accepted: " << text;
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
  EXPECT_NE(r.error().message.find(needle), std::string::npos)
      << "message: " << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
}
void ExpectRejected(const json& j, const std::string& needle) {
  ExpectRejected(j.dump(), needle);
}

TEST(TokenTest, RoundTrip) {
  VcryptToken t = SampleToken();
  std::string text = t.ToJsonString();
  EXPECT_LE(text.size(), kMaxTokenSize);
  auto r = VcryptToken::Parse(text);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->version, kTokenVersion);
  EXPECT_EQ(r->vm, t.vm);
  EXPECT_EQ(r->disk, t.disk);
  EXPECT_EQ(r->provider_name, t.provider_name);
  EXPECT_EQ(r->provider_type, t.provider_type);
  EXPECT_EQ(r->kek.kek_id, t.kek.kek_id);
  EXPECT_EQ(r->kek.data, t.kek.data);
  EXPECT_EQ(r->dek.iv, t.dek.iv);
  EXPECT_EQ(r->dek.ciphertext, t.dek.ciphertext);
  EXPECT_EQ(r->dek.tag, t.dek.tag);
  // Stable encoding: encoding the decoded token gives the same text.
  EXPECT_EQ(r->ToJsonString(), text);
}

TEST(TokenTest, SchemaShape) {
  json j = SampleJson();
  EXPECT_EQ(j["type"], "vcrypt");
  EXPECT_EQ(j["keyslots"], json::array());
  EXPECT_EQ(j["vcrypt_version"], 1);
  EXPECT_TRUE(j["provider"].is_object());
  EXPECT_TRUE(j["kek"]["data"].is_object());
  EXPECT_EQ(j["dek"]["alg"], "A256GCM");
}

TEST(TokenTest, EveryProviderTypeAccepted) {
  for (const char* type : {"native", "standard", "trusted"}) {
    json j = SampleJson();
    j["provider"]["type"] = type;
    auto r = VcryptToken::Parse(j.dump());
    ASSERT_TRUE(r.ok()) << type << ": " << r.error().message;
    EXPECT_EQ(r->provider_type, type);
  }
}

TEST(TokenTest, EmptyKekDataAccepted) {
  json j = SampleJson();
  j["kek"]["data"] = json::object();
  EXPECT_TRUE(VcryptToken::Parse(j.dump()).ok());
}

TEST(TokenTest, RejectsMalformedJson) {
  for (const char* text :
       {"", "{", "}", "{\"type\":", "not json", "{\"type\":\"vcrypt\",}",
        "{'type':'vcrypt'}", "\xff\xfe"}) {
    ExpectRejected(std::string(text), "");
  }
  // Every truncation of a valid token is refused, never thrown on.
  std::string text = SampleToken().ToJsonString();
  for (size_t n = 0; n < text.size(); ++n) {
    EXPECT_FALSE(VcryptToken::Parse(text.substr(0, n)).ok()) << n;
  }
  // Trailing garbage after the object.
  ExpectRejected(text + "x", "well-formed");
}

TEST(TokenTest, RejectsNonObjects) {
  for (const char* text : {"[]", "null", "1", "\"vcrypt\"", "true"}) {
    ExpectRejected(std::string(text), "not a JSON object");
  }
}

TEST(TokenTest, RejectsOversized) {
  json j = SampleJson();
  j["kek"]["data"]["pad"] = std::string(kMaxTokenSize, 'a');
  std::string text = j.dump();
  ASSERT_GT(text.size(), kMaxTokenSize);
  ExpectRejected(text, "more than the 8192");
  // Exactly at the limit is fine (padding with spaces keeps it valid).
  std::string ok = SampleToken().ToJsonString();
  ok.append(kMaxTokenSize - ok.size(), ' ');
  EXPECT_TRUE(VcryptToken::Parse(ok).ok());
  ExpectRejected(ok + " ", "more than");
}

TEST(TokenTest, RejectsUnknownVersion) {
  json j = SampleJson();
  j["vcrypt_version"] = 2;
  auto r = VcryptToken::Parse(j.dump());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
  EXPECT_EQ(r.error().message,
            "unsupported vcrypt token version 2 (this vcryptd supports 1); "
            "upgrade vcrypt");
  for (json v : {json(0), json(-1), json(18446744073709551615ull),
                 json(-9223372036854775807ll - 1)}) {
    j["vcrypt_version"] = v;
    ExpectRejected(j, "unsupported vcrypt token version " + v.dump());
  }
  // A newer token with members this version does not know is reported as
  // a version problem, not as an unknown member.
  j["vcrypt_version"] = 7;
  j["future_member"] = true;
  ExpectRejected(j, "version 7");
}

TEST(TokenTest, RejectsMistypedVersion) {
  for (json v :
       {json("1"), json(1.0), json(true), json::array({1}), json(nullptr)}) {
    json j = SampleJson();
    j["vcrypt_version"] = v;
    ExpectRejected(j, "'vcrypt_version' must be an integer");
  }
}

TEST(TokenTest, RejectsWrongType) {
  json j = SampleJson();
  j["type"] = "luks2-keyring";
  ExpectRejected(j, "type is 'luks2-keyring', expected 'vcrypt'");
  j["type"] = 5;
  ExpectRejected(j, "'type' must be a string");
}

TEST(TokenTest, RejectsMissingMembers) {
  for (const char* m : {"type", "keyslots", "vcrypt_version", "vm", "disk",
                        "provider", "kek", "dek"}) {
    json j = SampleJson();
    j.erase(m);
    ExpectRejected(j, std::string("'") + m + "' is missing");
  }
  for (const char* m : {"name", "type"}) {
    json j = SampleJson();
    j["provider"].erase(m);
    ExpectRejected(j, std::string("'provider.") + m + "' is missing");
  }
  for (const char* m : {"id", "data"}) {
    json j = SampleJson();
    j["kek"].erase(m);
    ExpectRejected(j, std::string("'kek.") + m + "' is missing");
  }
  for (const char* m : {"alg", "iv", "ct", "tag"}) {
    json j = SampleJson();
    j["dek"].erase(m);
    ExpectRejected(j, "'dek'");
  }
}

TEST(TokenTest, RejectsMistypedMembers) {
  struct Case {
    json::json_pointer where;
    json value;
    std::string needle;
  };
  std::vector<Case> cases = {
      {json::json_pointer("/vm"), 1, "'vm' must be a string"},
      {json::json_pointer("/disk"), json::object(), "'disk' must be a string"},
      {json::json_pointer("/provider"), "kms", "'provider' must be an object"},
      {json::json_pointer("/provider/name"), json::array(),
       "'provider.name' must be a string"},
      {json::json_pointer("/provider/type"), nullptr,
       "'provider.type' must be a string"},
      {json::json_pointer("/kek"), json::array(), "'kek' must be an object"},
      {json::json_pointer("/kek/id"), 42, "'kek.id' must be a string"},
      {json::json_pointer("/kek/data"), json::array(),
       "'kek.data' must be an object"},
      {json::json_pointer("/kek/data"), "x", "'kek.data' must be an object"},
      {json::json_pointer("/dek"), "AAAA", "'dek' must be an object"},
      {json::json_pointer("/dek/iv"), 12, "'dek'"},
      {json::json_pointer("/keyslots"), json::object(),
       "'keyslots' must be an empty array"},
      {json::json_pointer("/keyslots"), json::array({"0"}),
       "'keyslots' must be an empty array"},
  };
  for (const auto& c : cases) {
    json j = SampleJson();
    j[c.where] = c.value;
    ExpectRejected(j, c.needle);
  }
}

TEST(TokenTest, RejectsBadNames) {
  struct Case {
    json::json_pointer where;
    std::string value;
  };
  std::vector<Case> cases = {
      {json::json_pointer("/vm"), ""},
      {json::json_pointer("/vm"), "../etc"},
      {json::json_pointer("/vm"), "a/b"},
      {json::json_pointer("/vm"), "-vm"},
      {json::json_pointer("/vm"), "vm\nname"},
      {json::json_pointer("/disk"), "disk-0"},  // '-' not allowed in disks
      {json::json_pointer("/disk"), ".hidden"},
      {json::json_pointer("/disk"), std::string(46, 'd')},  // label too long
      {json::json_pointer("/provider/name"), ""},
      {json::json_pointer("/provider/name"), "kms prod"},
      {json::json_pointer("/provider/name"), std::string(65, 'p')},
  };
  for (const auto& c : cases) {
    json j = SampleJson();
    j[c.where] = c.value;
    ExpectRejected(j, "not allowed");
  }
  // "<vm>/<disk>" must fit the 47-byte LUKS2 label.
  json j = SampleJson();
  j["vm"] = std::string(30, 'v');
  j["disk"] = std::string(17, 'd');
  ExpectRejected(j, "LUKS2 label");
}

TEST(TokenTest, RejectsBadProviderType) {
  for (const char* type : {"", "kmip", "Native", "native "}) {
    json j = SampleJson();
    j["provider"]["type"] = type;
    ExpectRejected(j, "is not one of native, standard, trusted");
  }
}

TEST(TokenTest, KekIdLength) {
  json j = SampleJson();
  j["kek"]["id"] = "";
  ExpectRejected(j, "'kek.id' must be 1 to 256 bytes");
  j["kek"]["id"] = std::string(kMaxKekIdLength + 1, 'k');
  ExpectRejected(j, "'kek.id' must be 1 to 256 bytes");
  j["kek"]["id"] = std::string(kMaxKekIdLength, 'k');
  EXPECT_TRUE(VcryptToken::Parse(j.dump()).ok());
}

TEST(TokenTest, RejectsBadWrappedDek) {
  json j = SampleJson();
  j["dek"]["alg"] = "A128GCM";
  ExpectRejected(j, "'dek'");
  j = SampleJson();
  j["dek"]["iv"] = "AAAA";  // 3 bytes, not 12
  ExpectRejected(j, "'dek'");
  j = SampleJson();
  j["dek"]["extra"] = 1;
  ExpectRejected(j, "'dek'");
}

TEST(TokenTest, RejectsUnknownMembers) {
  json j = SampleJson();
  j["comment"] = "hello";
  ExpectRejected(j, "unknown member 'comment'");
  j = SampleJson();
  j["provider"]["url"] = "https://kms";
  ExpectRejected(j, "unknown member 'provider.url'");
  j = SampleJson();
  j["kek"]["plaintext"] = "AAAA";
  ExpectRejected(j, "unknown member 'kek.plaintext'");
}

TEST(TokenTest, RejectsDuplicateMembers) {
  std::string text = SampleToken().ToJsonString();
  ASSERT_EQ(text.back(), '}');
  text.pop_back();
  ExpectRejected(text + ",\"vm\":\"other\"}", "'vm' appears more than once");
  // Inside a nested object too.
  json j = SampleJson();
  std::string nested = j.dump();
  size_t at = nested.find("\"provider\":{");
  ASSERT_NE(at, std::string::npos);
  nested.insert(at + 12, "\"name\":\"evil\",");
  ExpectRejected(nested, "'name' appears more than once");
}

TEST(TokenTest, HostileStringsStayOnOneLine) {
  json j = SampleJson();
  j["type"] = std::string("vc\nrypt\r\x01") + std::string(5000, 'x');
  auto r = VcryptToken::Parse(j.dump());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  EXPECT_EQ(r.error().message.find('\r'), std::string::npos);
  EXPECT_LT(r.error().message.size(), 600u);
}

TEST(TokenTest, InvalidUtf8DoesNotThrow) {
  VcryptToken t = SampleToken();
  t.vm = "bad\xff";
  std::string text;
  ASSERT_NO_THROW(text = t.ToJsonString());
  auto r = VcryptToken::Parse(text);
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace vcrypt
