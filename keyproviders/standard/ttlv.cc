#include "keyproviders/standard/ttlv.h"

#include <cassert>
#include <cinttypes>
#include <cstdio>
#include <limits>
#include <utility>

namespace vcrypt::ttlv {
namespace {

uint32_t Load32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

uint64_t Load64(const uint8_t* p) {
  return (uint64_t{Load32(p)} << 32) | uint64_t{Load32(p + 4)};
}

void Store32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

bool KnownType(uint8_t t) { return t >= 0x01 && t <= 0x0A; }

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, <= U+10FFFF.
bool ValidUtf8(std::span<const uint8_t> s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t min;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const uint8_t cc = s[i + k];
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

// Index of the first non-zero byte of p[0..n), or n.
size_t FirstNonZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return i;
  }
  return n;
}

class Decoder {
 public:
  Decoder(std::span<const uint8_t> in, const DecodeOptions& options)
      : in_(in), opt_(options) {}

  // Decodes the item at `pos`, which must end at or before `limit` (the end
  // of the enclosing structure or of the message). On success `*next` is
  // the offset just past the item (padding included).
  Status DecodeAt(size_t pos, size_t limit, int depth, Item* out,
                  size_t* next) {
    if (limit - pos < kHeaderSize) {
      return Fail(pos, std::nullopt,
                  "truncated item header: need 8 bytes, " +
                      std::to_string(limit - pos) + " remain" + Where(limit));
    }
    const uint8_t* h = in_.data() + pos;
    const Tag tag = (uint32_t{h[0]} << 16) | (uint32_t{h[1]} << 8) | h[2];
    const uint8_t raw_type = h[3];
    const uint32_t len = Load32(h + 4);

    if (++items_ > opt_.max_items) {
      return Fail(pos, tag,
                  "more than " + std::to_string(opt_.max_items) + " items");
    }
    if (depth > opt_.max_depth) {
      return Fail(pos, tag,
                  "nesting deeper than " + std::to_string(opt_.max_depth));
    }
    if (!KnownType(raw_type)) {
      char b[8];
      std::snprintf(b, sizeof b, "0x%02X", raw_type);
      return Fail(pos, tag, std::string("unknown item type ") + b);
    }
    const Type type = static_cast<Type>(raw_type);
    if (opt_.fixed_type != nullptr) {
      std::optional<Type> want = opt_.fixed_type(tag);
      if (want.has_value() && *want != type) {
        return Fail(pos, tag,
                    "type " + TypeName(type) + " where the protocol requires " +
                        TypeName(*want));
      }
    }

    // Length rules per type, before the length is used for anything.
    switch (type) {
      case Type::kInteger:
      case Type::kEnumeration:
      case Type::kInterval:
        if (len != 4) return BadLength(pos, tag, type, len, "4");
        break;
      case Type::kLongInteger:
      case Type::kDateTime:
      case Type::kBoolean:
        if (len != 8) return BadLength(pos, tag, type, len, "8");
        break;
      case Type::kBigInteger:
        if (len == 0 || len % 8 != 0) {
          return BadLength(pos, tag, type, len, "a positive multiple of 8");
        }
        break;
      case Type::kStructure:
        if (len % 8 != 0) {
          return BadLength(pos, tag, type, len, "a multiple of 8");
        }
        break;
      case Type::kTextString:
      case Type::kByteString:
        break;
    }

    const size_t value_pos = pos + kHeaderSize;
    const uint64_t padded = (uint64_t{len} + 7) & ~uint64_t{7};
    if (padded > limit - value_pos) {
      return Fail(pos, tag,
                  "length " + std::to_string(len) + " runs past the end" +
                      Where(limit) + ": " + std::to_string(limit - value_pos) +
                      " value bytes remain");
    }
    const uint8_t* v = in_.data() + value_pos;
    const size_t end = value_pos + static_cast<size_t>(padded);

    out->tag = tag;
    out->type = type;
    out->offset = pos;

    switch (type) {
      case Type::kInteger:
        out->number = static_cast<int32_t>(Load32(v));
        break;
      case Type::kEnumeration:
      case Type::kInterval:
        out->number = Load32(v);
        break;
      case Type::kLongInteger:
      case Type::kDateTime:
        out->number = static_cast<int64_t>(Load64(v));
        break;
      case Type::kBoolean: {
        const uint64_t b = Load64(v);
        if (b > 1) {
          return Fail(pos, tag, "Boolean value is neither 0 nor 1");
        }
        out->number = static_cast<int64_t>(b);
        break;
      }
      case Type::kBigInteger:
      case Type::kByteString:
      case Type::kTextString:
        out->bytes = std::span<const uint8_t>(v, len);
        if (type == Type::kTextString && !ValidUtf8(out->bytes)) {
          return Fail(pos, tag, "TextString is not valid UTF-8");
        }
        break;
      case Type::kStructure: {
        const size_t struct_end = value_pos + len;
        size_t p = value_pos;
        while (p < struct_end) {
          Item child;
          size_t child_next = 0;
          VCRYPT_RETURN_IF_ERROR(
              DecodeAt(p, struct_end, depth + 1, &child, &child_next));
          out->children.push_back(std::move(child));
          p = child_next;
        }
        break;
      }
    }

    if (type != Type::kStructure) {
      const size_t pad = static_cast<size_t>(padded) - len;
      const size_t bad = FirstNonZero(v + len, pad);
      if (bad != pad) {
        return Fail(value_pos + len + bad, tag, "non-zero padding byte");
      }
    }
    *next = end;
    return Status::Ok();
  }

 private:
  std::string Where(size_t limit) const {
    if (limit == in_.size()) return " of the message";
    return " of the enclosing Structure (which ends at offset " +
           std::to_string(limit) + ")";
  }

  Status BadLength(size_t pos, Tag tag, Type type, uint32_t len,
                   const char* want) {
    return Fail(pos, tag,
                TypeName(type) + " with length " + std::to_string(len) +
                    " (must be " + want + ")");
  }

  static Error Fail(size_t offset, std::optional<Tag> tag,
                    const std::string& what) {
    std::string msg = "TTLV: " + what;
    if (tag.has_value()) msg += " (tag " + TagHex(*tag) + ")";
    msg += " at offset " + std::to_string(offset);
    return MakeError(ErrorCode::kInvalidArgument, std::move(msg));
  }

  std::span<const uint8_t> in_;
  const DecodeOptions& opt_;
  size_t items_ = 0;
};

}  // namespace

std::string TypeName(Type type) {
  switch (type) {
    case Type::kStructure:
      return "Structure";
    case Type::kInteger:
      return "Integer";
    case Type::kLongInteger:
      return "LongInteger";
    case Type::kBigInteger:
      return "BigInteger";
    case Type::kEnumeration:
      return "Enumeration";
    case Type::kBoolean:
      return "Boolean";
    case Type::kTextString:
      return "TextString";
    case Type::kByteString:
      return "ByteString";
    case Type::kDateTime:
      return "DateTime";
    case Type::kInterval:
      return "Interval";
  }
  char b[16];
  std::snprintf(b, sizeof b, "type 0x%02X", static_cast<unsigned>(type));
  return b;
}

std::string TagHex(Tag tag) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%06" PRIX32, tag);
  return b;
}

int32_t Item::integer() const {
  assert(type == Type::kInteger);
  return type == Type::kInteger ? static_cast<int32_t>(number) : 0;
}
int64_t Item::long_integer() const {
  assert(type == Type::kLongInteger);
  return type == Type::kLongInteger ? number : 0;
}
uint32_t Item::enumeration() const {
  assert(type == Type::kEnumeration);
  return type == Type::kEnumeration ? static_cast<uint32_t>(number) : 0;
}
bool Item::boolean() const {
  assert(type == Type::kBoolean);
  return type == Type::kBoolean && number != 0;
}
int64_t Item::date_time() const {
  assert(type == Type::kDateTime);
  return type == Type::kDateTime ? number : 0;
}
uint32_t Item::interval() const {
  assert(type == Type::kInterval);
  return type == Type::kInterval ? static_cast<uint32_t>(number) : 0;
}
std::string_view Item::text() const {
  assert(type == Type::kTextString);
  if (type != Type::kTextString) return {};
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}
std::span<const uint8_t> Item::byte_string() const {
  assert(type == Type::kByteString);
  return type == Type::kByteString ? bytes : std::span<const uint8_t>();
}

const Item* Item::Find(Tag t) const {
  for (const Item& c : children) {
    if (c.tag == t) return &c;
  }
  return nullptr;
}

std::vector<const Item*> Item::FindAll(Tag t) const {
  std::vector<const Item*> out;
  for (const Item& c : children) {
    if (c.tag == t) out.push_back(&c);
  }
  return out;
}

Result<Item> Decode(std::span<const uint8_t> message,
                    const DecodeOptions& options) {
  if (message.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "TTLV: empty message");
  }
  if (message.size() > options.max_message_size) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "TTLV: message of " + std::to_string(message.size()) +
                         " bytes exceeds the limit of " +
                         std::to_string(options.max_message_size));
  }
  Decoder d(message, options);
  Item item;
  size_t next = 0;
  VCRYPT_RETURN_IF_ERROR(d.DecodeAt(0, message.size(), 1, &item, &next));
  if (next != message.size()) {
    // The top item is complete but shorter than the input.
    return MakeError(ErrorCode::kInvalidArgument,
                     "TTLV: " + std::to_string(message.size() - next) +
                         " bytes of trailing data after the top-level item "
                         "at offset " +
                         std::to_string(next));
  }
  return item;
}

Result<size_t> MessageSize(std::span<const uint8_t> header,
                           size_t max_message_size) {
  if (header.size() < kHeaderSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "TTLV: need 8 header bytes to size a message, have " +
                         std::to_string(header.size()));
  }
  if (header[3] != static_cast<uint8_t>(Type::kStructure)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "TTLV: message does not start with a Structure at "
                     "offset 0");
  }
  const uint64_t len = Load32(header.data() + 4);
  if (len % 8 != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "TTLV: Structure with length " + std::to_string(len) +
                         " (must be a multiple of 8) at offset 0");
  }
  const uint64_t total = len + kHeaderSize;
  if (total > max_message_size) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "TTLV: message of " + std::to_string(total) +
                         " bytes exceeds the limit of " +
                         std::to_string(max_message_size));
  }
  return static_cast<size_t>(total);
}

// --- Writer ---------------------------------------------------------------

void Writer::Fail(std::string message) {
  if (!error_.has_value()) {
    error_ = MakeError(ErrorCode::kInvalidArgument, std::move(message));
  }
}

void Writer::Header(Tag tag, Type type, size_t length) {
  if (tag > 0xFFFFFF) Fail("TTLV: tag " + TagHex(tag) + " exceeds 24 bits");
  if (length > std::numeric_limits<uint32_t>::max()) {
    Fail("TTLV: value of " + std::to_string(length) +
         " bytes exceeds the 4 GiB length field (tag " + TagHex(tag) + ")");
  }
  const size_t at = buf_.size();
  buf_.resize(at + kHeaderSize);
  buf_[at] = static_cast<uint8_t>(tag >> 16);
  buf_[at + 1] = static_cast<uint8_t>(tag >> 8);
  buf_[at + 2] = static_cast<uint8_t>(tag);
  buf_[at + 3] = static_cast<uint8_t>(type);
  Store32(&buf_[at + 4], static_cast<uint32_t>(length));
}

void Writer::Pad() { buf_.resize((buf_.size() + 7) & ~size_t{7}, 0); }

void Writer::BeginStructure(Tag tag) {
  open_.push_back(buf_.size());
  Header(tag, Type::kStructure, 0);
}

void Writer::EndStructure() {
  if (open_.empty()) {
    if (!error_.has_value()) {
      error_ = MakeError(ErrorCode::kInternal,
                         "TTLV: EndStructure without BeginStructure");
    }
    return;
  }
  const size_t at = open_.back();
  open_.pop_back();
  const size_t len = buf_.size() - at - kHeaderSize;
  if (len > std::numeric_limits<uint32_t>::max()) {
    Fail("TTLV: Structure exceeds the 4 GiB length field");
    return;
  }
  Store32(&buf_[at + 4], static_cast<uint32_t>(len));
}

void Writer::Integer(Tag tag, int32_t value) {
  Header(tag, Type::kInteger, 4);
  const size_t at = buf_.size();
  buf_.resize(at + 8, 0);
  Store32(&buf_[at], static_cast<uint32_t>(value));
}

void Writer::LongInteger(Tag tag, int64_t value) {
  Header(tag, Type::kLongInteger, 8);
  const size_t at = buf_.size();
  buf_.resize(at + 8);
  const uint64_t u = static_cast<uint64_t>(value);
  Store32(&buf_[at], static_cast<uint32_t>(u >> 32));
  Store32(&buf_[at + 4], static_cast<uint32_t>(u));
}

void Writer::BigInteger(Tag tag, std::span<const uint8_t> value) {
  const size_t n = value.empty() ? 8 : (value.size() + 7) & ~size_t{7};
  Header(tag, Type::kBigInteger, n);
  const uint8_t fill = (!value.empty() && (value[0] & 0x80)) ? 0xFF : 0x00;
  buf_.insert(buf_.end(), n - value.size(), fill);
  buf_.insert(buf_.end(), value.begin(), value.end());
}

void Writer::Enumeration(Tag tag, uint32_t value) {
  Header(tag, Type::kEnumeration, 4);
  const size_t at = buf_.size();
  buf_.resize(at + 8, 0);
  Store32(&buf_[at], value);
}

void Writer::Boolean(Tag tag, bool value) {
  Header(tag, Type::kBoolean, 8);
  buf_.insert(buf_.end(), 7, 0);
  buf_.push_back(value ? 1 : 0);
}

void Writer::TextString(Tag tag, std::string_view value) {
  Header(tag, Type::kTextString, value.size());
  buf_.insert(buf_.end(), value.begin(), value.end());
  Pad();
}

void Writer::ByteString(Tag tag, std::span<const uint8_t> value) {
  Header(tag, Type::kByteString, value.size());
  buf_.insert(buf_.end(), value.begin(), value.end());
  Pad();
}

void Writer::DateTime(Tag tag, int64_t value) {
  Header(tag, Type::kDateTime, 8);
  const size_t at = buf_.size();
  buf_.resize(at + 8);
  const uint64_t u = static_cast<uint64_t>(value);
  Store32(&buf_[at], static_cast<uint32_t>(u >> 32));
  Store32(&buf_[at + 4], static_cast<uint32_t>(u));
}

void Writer::Interval(Tag tag, uint32_t value) {
  Header(tag, Type::kInterval, 4);
  const size_t at = buf_.size();
  buf_.resize(at + 8, 0);
  Store32(&buf_[at], value);
}

void Writer::Append(const Item& item) {
  switch (item.type) {
    case Type::kStructure:
      BeginStructure(item.tag);
      for (const Item& c : item.children) Append(c);
      EndStructure();
      return;
    case Type::kInteger:
      Integer(item.tag, static_cast<int32_t>(item.number));
      return;
    case Type::kLongInteger:
      LongInteger(item.tag, item.number);
      return;
    case Type::kBigInteger:
      BigInteger(item.tag, item.bytes);
      return;
    case Type::kEnumeration:
      Enumeration(item.tag, static_cast<uint32_t>(item.number));
      return;
    case Type::kBoolean:
      Boolean(item.tag, item.number != 0);
      return;
    case Type::kTextString:
      TextString(item.tag, {reinterpret_cast<const char*>(item.bytes.data()),
                            item.bytes.size()});
      return;
    case Type::kByteString:
      ByteString(item.tag, item.bytes);
      return;
    case Type::kDateTime:
      DateTime(item.tag, item.number);
      return;
    case Type::kInterval:
      Interval(item.tag, static_cast<uint32_t>(item.number));
      return;
  }
  Fail("TTLV: cannot encode " + TypeName(item.type));
}

void Writer::AppendEncoded(std::span<const uint8_t> items) {
  if (items.size() % 8 != 0) {
    Fail("TTLV: pre-encoded items of " + std::to_string(items.size()) +
         " bytes are not a multiple of 8");
    return;
  }
  buf_.insert(buf_.end(), items.begin(), items.end());
}

Result<std::vector<uint8_t>> Writer::Finish() && {
  if (!open_.empty() && !error_.has_value()) {
    error_ = MakeError(
        ErrorCode::kInternal,
        "TTLV: " + std::to_string(open_.size()) + " Structure(s) left open");
  }
  if (error_.has_value()) return std::move(*error_);
  return std::move(buf_);
}

}  // namespace vcrypt::ttlv
