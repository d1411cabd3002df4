// TTLV codec: byte-exact encodings of every type (the KMIP spec's own
// examples, KMIP 1.4 section 9.1.2), round trips, and one test per class of
// malformed input. The decoder must reject each with kInvalidArgument and
// a message naming the problem and its offset.
#include "keyproviders/standard/ttlv.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace vcrypt::ttlv {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr Tag kT = 0x420020;  // the tag of the spec's examples

Bytes FromHex(std::string_view hex) {
  Bytes out;
  int hi = -1;
  for (char c : hex) {
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      continue;  // spaces, '|' separators
    }
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<uint8_t>(hi << 4 | v));
      hi = -1;
    }
  }
  EXPECT_EQ(hi, -1) << "odd number of hex digits";
  return out;
}

// A golden vector from tests/kmip/golden/ ('#' lines are comments).
Bytes Golden(const std::string& name) {
  auto path = std::filesystem::path(__FILE__).parent_path().parent_path() /
              "kmip" / "golden" / name;
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "missing " << path;
  std::string line, hex;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '#') continue;
    hex += line;
  }
  return FromHex(hex);
}

Bytes Encode(const auto& fn) {
  Writer w;
  fn(w);
  auto r = std::move(w).Finish();
  EXPECT_TRUE(r.ok()) << r.error().message;
  return r.ok() ? std::move(r).value() : Bytes{};
}

bool Decodes(const Bytes& b, const DecodeOptions& options = {}) {
  return Decode(b, options).ok();
}

// Decode must fail with kInvalidArgument and a message containing `what`.
void ExpectInvalid(const Bytes& b, const std::string& what,
                   const DecodeOptions& options = {}) {
  auto r = Decode(b, options);
  ASSERT_FALSE(r.ok()) << "decoded although " << what;
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find(what), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.rfind("TTLV: ", 0), 0u) << r.error().message;
  EXPECT_NE(r.error().message.find("offset"), std::string::npos)
      << r.error().message;
}

// Encoding `fn` gives exactly `hex`, which decodes, and re-encodes to the
// same bytes.
void ExpectCanonical(const auto& fn, std::string_view hex) {
  Bytes want = FromHex(hex);
  EXPECT_EQ(Encode(fn), want);
  auto item = Decode(want);
  ASSERT_TRUE(item.ok()) << item.error().message;
  Writer w;
  w.Append(*item);
  auto again = std::move(w).Finish();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, want);
}

// --- The spec's examples, byte-exact ----------------------------------------

TEST(TtlvEncoding, SpecExamplesByteExact) {
  ExpectCanonical([](Writer& w) { w.Integer(kT, 8); },
                  "420020 | 02 | 00000004 | 00000008 00000000");
  ExpectCanonical([](Writer& w) { w.LongInteger(kT, 123456789000000000LL); },
                  "420020 | 03 | 00000008 | 01B69B4BA5749200");
  // 1234567890000000000000000000
  const Bytes big = FromHex("03FD35EB6BC2DF4618080000");
  ExpectCanonical([&](Writer& w) { w.BigInteger(kT, big); },
                  "420020 | 04 | 00000010 | 0000000003FD35EB 6BC2DF4618080000");
  ExpectCanonical([](Writer& w) { w.Enumeration(kT, 255); },
                  "420020 | 05 | 00000004 | 000000FF 00000000");
  ExpectCanonical([](Writer& w) { w.Boolean(kT, true); },
                  "420020 | 06 | 00000008 | 0000000000000001");
  ExpectCanonical([](Writer& w) { w.TextString(kT, "Hello World"); },
                  "420020 | 07 | 0000000B | 48656C6C6F20576F 726C640000000000");
  const Bytes three = {1, 2, 3};
  ExpectCanonical([&](Writer& w) { w.ByteString(kT, three); },
                  "420020 | 08 | 00000003 | 0102030000000000");
  // Friday, March 14, 2008, 11:56:40 GMT
  ExpectCanonical([](Writer& w) { w.DateTime(kT, 0x47DA67F8); },
                  "420020 | 09 | 00000008 | 0000000047DA67F8");
  // 10 days
  ExpectCanonical([](Writer& w) { w.Interval(kT, 864000); },
                  "420020 | 0A | 00000004 | 000D2F00 00000000");
  ExpectCanonical(
      [](Writer& w) {
        w.Structure(kT, [&] {
          w.Enumeration(0x420004, 254);
          w.Integer(0x420005, 255);
        });
      },
      "420020 | 01 | 00000020 | 420004 | 05 | 00000004 | 000000FE 00000000 |"
      " 420005 | 02 | 00000004 | 000000FF 00000000");
}

TEST(TtlvEncoding, EdgeValues) {
  ExpectCanonical([](Writer& w) { w.Integer(kT, -1); },
                  "420020 02 00000004 FFFFFFFF 00000000");
  ExpectCanonical([](Writer& w) { w.LongInteger(kT, INT64_MIN); },
                  "420020 03 00000008 8000000000000000");
  ExpectCanonical([](Writer& w) { w.DateTime(kT, -1); },
                  "420020 09 00000008 FFFFFFFFFFFFFFFF");
  ExpectCanonical([](Writer& w) { w.Enumeration(kT, 0xFFFFFFFF); },
                  "420020 05 00000004 FFFFFFFF 00000000");
  ExpectCanonical([](Writer& w) { w.Boolean(kT, false); },
                  "420020 06 00000008 0000000000000000");
  // Empty strings have no padding at all.
  ExpectCanonical([](Writer& w) { w.TextString(kT, ""); },
                  "420020 07 00000000");
  ExpectCanonical([](Writer& w) { w.ByteString(kT, {}); },
                  "420020 08 00000000");
  // A multiple of 8 gets no padding (PyKMIP's re-encoder adds 8 bytes here,
  // a bug the decoder would reject).
  ExpectCanonical([](Writer& w) { w.TextString(kT, "12345678"); },
                  "420020 07 00000008 3132333435363738");
  ExpectCanonical([](Writer& w) { w.Structure(kT, [] {}); },
                  "420020 01 00000000");
  // BigInteger: negative values are sign-extended with 0xFF; empty is 0.
  const Bytes neg = {0x80};
  ExpectCanonical([&](Writer& w) { w.BigInteger(kT, neg); },
                  "420020 04 00000008 FFFFFFFFFFFFFF80");
  ExpectCanonical([](Writer& w) { w.BigInteger(kT, {}); },
                  "420020 04 00000008 0000000000000000");
  // Non-ASCII UTF-8 is fine.
  ExpectCanonical([](Writer& w) { w.TextString(kT, "\xC3\xA9"); },
                  "420020 07 00000002 C3A9000000000000");
}

TEST(TtlvDecode, DecodesEveryTypeIntoViews) {
  const Bytes raw = {0xDE, 0xAD, 0xBE, 0xEF, 0x01};
  const Bytes big = {0x01, 0x00};
  Bytes msg = Encode([&](Writer& w) {
    w.Structure(0x420001, [&] {
      w.Integer(0x420002, -7);
      w.LongInteger(0x420003, -8);
      w.BigInteger(0x420004, big);
      w.Enumeration(0x420005, 0x80000001);
      w.Boolean(0x420006, true);
      w.TextString(0x420007, "text");
      w.ByteString(0x420008, raw);
      w.DateTime(0x420009, 1700000000);
      w.Interval(0x42000A, 4000000000u);
      w.Structure(0x42000B, [&] { w.Boolean(0x42000C, false); });
    });
  });
  auto r = Decode(msg);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Item& s = *r;
  EXPECT_EQ(s.tag, 0x420001u);
  EXPECT_EQ(s.type, Type::kStructure);
  ASSERT_EQ(s.children.size(), 10u);
  EXPECT_EQ(s.Find(0x420002)->integer(), -7);
  EXPECT_EQ(s.Find(0x420003)->long_integer(), -8);
  const Item* b = s.Find(0x420004);
  EXPECT_EQ(b->type, Type::kBigInteger);
  EXPECT_EQ(Bytes(b->bytes.begin(), b->bytes.end()),
            FromHex("0000000000000100"));
  EXPECT_EQ(s.Find(0x420005)->enumeration(), 0x80000001u);
  EXPECT_TRUE(s.Find(0x420006)->boolean());
  EXPECT_EQ(s.Find(0x420007)->text(), "text");
  auto bs = s.Find(0x420008)->byte_string();
  EXPECT_EQ(Bytes(bs.begin(), bs.end()), raw);
  EXPECT_EQ(s.Find(0x420009)->date_time(), 1700000000);
  EXPECT_EQ(s.Find(0x42000A)->interval(), 4000000000u);
  EXPECT_FALSE(s.Find(0x42000B)->Find(0x42000C)->boolean());
  EXPECT_EQ(s.Find(0x42000B)->offset, msg.size() - 24);
  EXPECT_EQ(s.Find(0x424242), nullptr);

  // Views, not copies: the bytes live in the caller's buffer.
  EXPECT_GE(bs.data(), msg.data());
  EXPECT_LE(bs.data() + bs.size(), msg.data() + msg.size());
  const std::string_view t = s.Find(0x420007)->text();
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(t.data()), msg.data() + 96);

  Writer w;
  w.Append(s);
  auto again = std::move(w).Finish();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, msg);
}

TEST(TtlvDecode, FindAllKeepsOrder) {
  Bytes msg = Encode([](Writer& w) {
    w.Structure(kT, [&] {
      w.Integer(0x420001, 1);
      w.Integer(0x420002, 2);
      w.Integer(0x420001, 3);
    });
  });
  auto r = Decode(msg);
  ASSERT_TRUE(r.ok());
  auto all = r->FindAll(0x420001);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]->integer(), 1);
  EXPECT_EQ(all[1]->integer(), 3);
}

TEST(TtlvDecode, GoldenVectorsRoundTrip) {
  for (const char* name :
       {"spec_3_1_1_0a_create_request.hex", "spec_3_1_1_0b_create_response.hex",
        "spec_3_1_3_2a_get_request.hex", "spec_3_1_3_2b_get_response.hex"}) {
    Bytes msg = Golden(name);
    ASSERT_FALSE(msg.empty()) << name;
    auto r = Decode(msg);
    ASSERT_TRUE(r.ok()) << name << ": " << r.error().message;
    Writer w;
    w.Append(*r);
    auto again = std::move(w).Finish();
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, msg) << name;
  }
}

// --- Malformed input, one class per test ----------------------------------

TEST(TtlvMalformed, EveryTruncationIsRejected) {
  const Bytes msg = Golden("spec_3_1_3_2b_get_response.hex");
  ASSERT_EQ(msg.size(), 304u);
  for (size_t n = 0; n < msg.size(); ++n) {
    Bytes prefix(msg.begin(), msg.begin() + n);
    auto r = Decode(prefix);
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes decoded";
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    if (n > 0) {
      EXPECT_NE(r.error().message.find("offset"), std::string::npos)
          << r.error().message;
    }
  }
  EXPECT_TRUE(Decode(msg).ok());
}

TEST(TtlvMalformed, NonZeroPadding) {
  // TextString "Hello World" with a non-zero pad byte.
  Bytes b = FromHex("420020 07 0000000B 48656C6C6F20576F 726C640000000000");
  b.back() = 0x01;
  ExpectInvalid(b, "non-zero padding byte (tag 0x420020) at offset 23");
  // Integer: the 4 bytes after the value are padding.
  Bytes i = FromHex("420020 02 00000004 00000008 00000100");
  ExpectInvalid(i, "non-zero padding byte");
  // ByteString.
  Bytes s = FromHex("420020 08 00000003 010203000000FF00");
  ExpectInvalid(s, "non-zero padding byte");
  // Enumeration and Interval.
  ExpectInvalid(FromHex("420020 05 00000004 000000FF 80000000"),
                "non-zero padding byte");
  ExpectInvalid(FromHex("420020 0A 00000004 000000FF 00000001"),
                "non-zero padding byte");
}

TEST(TtlvMalformed, LengthPastTheEnd) {
  // A TextString claiming 100 bytes in a 16-byte message.
  ExpectInvalid(FromHex("420020 07 00000064 4142434445464748"),
                "length 100 runs past the end of the message");
  // Padding counts: 9 bytes need 16 on the wire.
  ExpectInvalid(FromHex("420020 08 00000009 0102030405060708 09"),
                "runs past the end");
  // A child running past the end of its (shorter) structure.
  ExpectInvalid(FromHex("420001 01 00000008 420020 02 00000004 00000001 "
                        "00000000"),
                "runs past the end of the enclosing Structure (which ends at "
                "offset 16)");
}

TEST(TtlvMalformed, HugeLengths) {
  ExpectInvalid(FromHex("420020 08 FFFFFFFF 0000000000000000"),
                "length 4294967295 runs past the end");
  ExpectInvalid(FromHex("420020 07 FFFFFFFF"), "runs past the end");
  // 0xFFFFFFF8 is a valid Structure length by itself.
  ExpectInvalid(FromHex("420020 01 FFFFFFF8 420021 02 00000004 00000001 "
                        "00000000"),
                "length 4294967288 runs past the end");
  ExpectInvalid(FromHex("420020 01 FFFFFFFF"),
                "Structure with length 4294967295 (must be a multiple of 8)");
  ExpectInvalid(FromHex("420020 04 FFFFFFF8 00"), "runs past the end");
  // Nested: the inner length is checked against the outer structure.
  ExpectInvalid(FromHex("420001 01 00000020 420002 01 00000010 "
                        "420020 08 FFFFFFF0 0000000000000000 420003 01 "
                        "00000000"),
                "length 4294967280 runs past the end of the enclosing "
                "Structure (which ends at offset 32)");
}

Bytes Nested(int depth) {
  Writer w;
  for (int i = 0; i < depth; ++i) w.BeginStructure(kT);
  for (int i = 0; i < depth; ++i) w.EndStructure();
  auto r = std::move(w).Finish();
  return r.ok() ? std::move(r).value() : Bytes{};
}

TEST(TtlvMalformed, NestingBeyondTheLimit) {
  EXPECT_TRUE(Decodes(Nested(kMaxDepth)));
  ExpectInvalid(Nested(kMaxDepth + 1), "nesting deeper than 16");
  ExpectInvalid(Nested(1000), "nesting deeper than 16");
  DecodeOptions shallow;
  shallow.max_depth = 2;
  EXPECT_TRUE(Decodes(Nested(2), shallow));
  ExpectInvalid(Nested(3), "nesting deeper than 2", shallow);
}

std::optional<Type> TestSchema(Tag t) {
  if (t == 0x42000D) return Type::kInteger;
  if (t == 0x420094) return Type::kTextString;
  return std::nullopt;
}

TEST(TtlvMalformed, WrongTypeForAFixedTag) {
  DecodeOptions o;
  o.fixed_type = &TestSchema;
  // Batch Count (Integer) sent as an Enumeration.
  ExpectInvalid(FromHex("42000D 05 00000004 00000001 00000000"),
                "type Enumeration where the protocol requires Integer (tag "
                "0x42000D) at offset 0",
                o);
  // Unique Identifier (TextString) as a ByteString, nested.
  ExpectInvalid(
      FromHex("420001 01 00000010 420094 08 00000001 3100000000000000"),
      "type ByteString where the protocol requires TextString", o);
  // Tags the schema does not fix may have any type.
  EXPECT_TRUE(Decodes(FromHex("420020 05 00000004 00000001 00000000"), o));
  EXPECT_TRUE(Decodes(FromHex("42000D 02 00000004 00000001 00000000"), o));
}

TEST(TtlvMalformed, BooleanNotZeroOrOne) {
  ExpectInvalid(FromHex("420020 06 00000008 0000000000000002"),
                "Boolean value is neither 0 nor 1");
  ExpectInvalid(FromHex("420020 06 00000008 0100000000000000"),
                "Boolean value is neither 0 nor 1");
  ExpectInvalid(FromHex("420020 06 00000008 FFFFFFFFFFFFFFFF"),
                "Boolean value is neither 0 nor 1");
}

TEST(TtlvMalformed, StructureLengthNotCoveringChildren) {
  // Length 24 for a 16-byte child: 8 stray zero bytes follow it.
  ExpectInvalid(FromHex("420001 01 00000018 420020 02 00000004 00000001 "
                        "00000000 0000000000000000"),
                "unknown item type 0x00");
  // Length 8 for a 16-byte child.
  ExpectInvalid(FromHex("420001 01 00000008 420020 02 00000004 00000001 "
                        "00000000"),
                "runs past the end of the enclosing Structure");
  // Length 20: not a multiple of 8, can never cover whole children.
  ExpectInvalid(FromHex("420001 01 00000014 420020 02 00000004 00000001 "
                        "00000000 00000000"),
                "(must be a multiple of 8)");
  // 8 bytes too many, read as the header of a further (bogus) child.
  ExpectInvalid(FromHex("420001 01 00000018 420020 02 00000004 00000001 "
                        "00000000 420021 02 00000000"),
                "Integer with length 0 (must be 4) (tag 0x420021) at offset "
                "24");
}

TEST(TtlvMalformed, TrailingGarbage) {
  Bytes msg = Golden("spec_3_1_1_0b_create_response.hex");
  Bytes one = msg;
  one.push_back(0);
  ExpectInvalid(one,
                "1 bytes of trailing data after the top-level item at "
                "offset 200");
  Bytes item = msg;
  item.insert(item.end(),
              {0x42, 0, 0x20, 2, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0});
  ExpectInvalid(item, "16 bytes of trailing data");
}

TEST(TtlvMalformed, WrongFixedLengths) {
  ExpectInvalid(FromHex("420020 02 00000008 0000000000000008"),
                "Integer with length 8 (must be 4)");
  ExpectInvalid(FromHex("420020 03 00000004 00000008 00000000"),
                "LongInteger with length 4 (must be 8)");
  ExpectInvalid(FromHex("420020 05 00000008 0000000000000008"),
                "Enumeration with length 8 (must be 4)");
  ExpectInvalid(FromHex("420020 06 00000004 00000001 00000000"),
                "Boolean with length 4 (must be 8)");
  ExpectInvalid(FromHex("420020 09 00000004 00000001 00000000"),
                "DateTime with length 4 (must be 8)");
  ExpectInvalid(FromHex("420020 0A 00000008 0000000000000001"),
                "Interval with length 8 (must be 4)");
  ExpectInvalid(FromHex("420020 04 00000000"),
                "BigInteger with length 0 (must be a positive multiple of 8)");
  ExpectInvalid(FromHex("420020 04 0000000C 0000000000000000 0000000000000000"),
                "BigInteger with length 12");
}

TEST(TtlvMalformed, UnknownTypes) {
  ExpectInvalid(FromHex("420020 00 00000000"), "unknown item type 0x00");
  // 0x0B is KMIP 2.0's Date Time Extended: not part of KMIP 1.x.
  ExpectInvalid(FromHex("420020 0B 00000008 0000000000000001"),
                "unknown item type 0x0B");
  ExpectInvalid(FromHex("420020 FF 00000000"), "unknown item type 0xFF");
}

TEST(TtlvMalformed, InvalidUtf8) {
  ExpectInvalid(FromHex("420020 07 00000001 FF00000000000000"),
                "TextString is not valid UTF-8");
  // Overlong '/', a surrogate, a truncated sequence, beyond U+10FFFF.
  for (const char* bad : {"C0AF", "EDA080", "E282", "F4908080"}) {
    Bytes v = FromHex(bad);
    Bytes b = FromHex("420020 07 00000000");
    b[7] = static_cast<uint8_t>(v.size());
    b.insert(b.end(), v.begin(), v.end());
    b.resize(16, 0);
    ExpectInvalid(b, "not valid UTF-8");
  }
}

TEST(TtlvMalformed, SizeAndItemLimits) {
  const Bytes none;
  auto empty = Decode(none);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().message, "TTLV: empty message");
  // Over the size limit: rejected before looking at the content.
  Bytes big(kMaxMessageSize + 8, 0);
  auto r = Decode(big);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message,
            "TTLV: message of 1048584 bytes exceeds the "
            "limit of 1048576");
  // Item count: a structure with 20 children against a limit of 10.
  Bytes many = Encode([](Writer& w) {
    w.Structure(kT, [&] {
      for (int i = 0; i < 20; ++i) w.Boolean(0x420021, true);
    });
  });
  DecodeOptions o;
  o.max_items = 10;
  ExpectInvalid(many, "more than 10 items", o);
  EXPECT_TRUE(Decode(many).ok());
  // The default limit, with the smallest items (empty structures).
  Bytes flood = Encode([](Writer& w) {
    w.Structure(kT, [&] {
      for (size_t i = 0; i < kMaxItems; ++i) w.Structure(0x420021, [] {});
    });
  });
  ExpectInvalid(flood, "more than 16384 items");
}

TEST(TtlvMalformed, ErrorMessagesCarryNoValueBytes) {
  // A "key" with bad padding: the message names the problem, not the key.
  Bytes b = FromHex("420043 08 00000005");
  for (char c : std::string("SECRE")) b.push_back(static_cast<uint8_t>(c));
  b.insert(b.end(), {0, 0, 7});
  auto r = Decode(b);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message,
            "TTLV: non-zero padding byte (tag 0x420043) at offset 15");
  EXPECT_EQ(r.error().message.find("SECRE"), std::string::npos);
  EXPECT_EQ(r.error().message.find("5345"), std::string::npos);
}

// --- MessageSize and Writer -------------------------------------------------

TEST(TtlvMessageSize, FromHeader) {
  const Bytes msg = Golden("spec_3_1_3_2b_get_response.hex");
  auto n = MessageSize(std::span(msg).first(8));
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, msg.size());
  EXPECT_FALSE(MessageSize(std::span(msg).first(7)).ok());
  EXPECT_FALSE(MessageSize(FromHex("42007B 02 00000004")).ok());
  EXPECT_FALSE(MessageSize(FromHex("42007B 01 00000004")).ok());
  auto huge = MessageSize(FromHex("42007B 01 FFFFFFF8"));
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.error().message,
            "TTLV: message of 4294967296 bytes exceeds the limit of 1048576");
  EXPECT_TRUE(MessageSize(FromHex("42007B 01 00000000")).ok());
}

TEST(TtlvWriter, UnbalancedStructuresFail) {
  Writer open;
  open.BeginStructure(kT);
  auto r = std::move(open).Finish();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "TTLV: 1 Structure(s) left open");

  Writer extra;
  extra.EndStructure();
  EXPECT_FALSE(std::move(extra).Finish().ok());

  Writer bad_tag;
  bad_tag.Integer(0x1000000, 1);
  EXPECT_FALSE(std::move(bad_tag).Finish().ok());

  Writer odd;
  const Bytes three = {1, 2, 3};
  odd.AppendEncoded(three);
  EXPECT_FALSE(std::move(odd).Finish().ok());
}

TEST(TtlvWriter, AppendEncodedNestsItems) {
  Bytes inner = Encode([](Writer& w) { w.Integer(0x420021, 5); });
  Bytes outer = Encode(
      [&](Writer& w) { w.Structure(kT, [&] { w.AppendEncoded(inner); }); });
  auto r = Decode(outer);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->Find(0x420021)->integer(), 5);
}

TEST(TtlvNames, TypeAndTag) {
  EXPECT_EQ(TypeName(Type::kDateTime), "DateTime");
  EXPECT_EQ(TypeName(static_cast<Type>(0x42)), "type 0x42");
  EXPECT_EQ(TagHex(0x42000D), "0x42000D");
}

}  // namespace
}  // namespace vcrypt::ttlv
