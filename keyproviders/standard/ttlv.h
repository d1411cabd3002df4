// TTLV: the Tag-Type-Length-Value encoding of KMIP (KMIP 1.x spec, 9.1).
//
// An item is a 3-byte tag, a 1-byte type, a 4-byte big-endian length and a
// value padded with zero bytes to a multiple of 8. A Structure's value is the
// concatenation of its children.
//
// Decoding contract (Decode):
//  - Works over a caller-owned buffer and never copies values: TextString,
//    ByteString and BigInteger values are std::span views into that buffer.
//    A response that carries key material can therefore live in a
//    SecureBuffer, and the key bytes are copied only once, into another
//    SecureBuffer, by whoever extracts them. The decoded Item tree is valid
//    only as long as the buffer is.
//  - Strict, and never trusts a length: every length is checked against the
//    bytes that remain in the enclosing structure before it is used; fixed
//    types must have their fixed length (Integer/Enumeration/Interval 4,
//    LongInteger/DateTime/Boolean 8), BigInteger a positive multiple of 8,
//    Boolean the value 0 or 1, TextString valid UTF-8; padding bytes must be
//    zero; a Structure's length must exactly cover its children; the top
//    item must span the whole input (nothing before or after it). Nesting
//    depth, total size and item count are bounded (DecodeOptions).
//  - Every failure is an Error with ErrorCode::kInvalidArgument whose message
//    starts with "TTLV: ", says what was wrong and at which byte offset (and
//    the tag when known). Messages never contain value bytes, so they are
//    safe to log even when the message carried a key.
//  - No exceptions escape (allocation failure aside), and no undefined
//    behaviour on any input: the decoder is fuzzed under ASan/UBSan
//    (fuzz/ttlv_fuzz.cc, scripts/fuzz.sh).
//
// Encoding (Writer) produces canonical TTLV: minimal padding, zero pad bytes,
// BigIntegers sign-extended to a multiple of 8. Decode(Encode(x)) == x and,
// because decoding is strict, Encode(Decode(bytes)) == bytes.
#ifndef VCRYPT_KEYPROVIDERS_STANDARD_TTLV_H_
#define VCRYPT_KEYPROVIDERS_STANDARD_TTLV_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vcrypt::ttlv {

// A 24-bit tag (KMIP tags are 0x42xxxx; 0x54xxxx are extensions).
using Tag = uint32_t;

enum class Type : uint8_t {
  kStructure = 0x01,
  kInteger = 0x02,      // int32
  kLongInteger = 0x03,  // int64
  kBigInteger = 0x04,   // two's complement, big endian, multiple of 8 bytes
  kEnumeration = 0x05,  // uint32
  kBoolean = 0x06,      // 8 bytes, 0 or 1
  kTextString = 0x07,   // UTF-8, unpadded length
  kByteString = 0x08,   // unpadded length
  kDateTime = 0x09,     // int64, seconds since the POSIX epoch
  kInterval = 0x0A,     // uint32, seconds
};

// "Structure", "Integer", ...; "type 0xNN" for anything else.
std::string TypeName(Type type);
// "0x42000D".
std::string TagHex(Tag tag);

inline constexpr size_t kHeaderSize = 8;
// Limits of Decode. KMIP responses that vcrypt reads are a few hundred bytes
// (a batch of Gets a few KiB); the limits only stop a hostile peer from
// making us allocate or recurse without bound.
inline constexpr size_t kMaxMessageSize = 1 << 20;  // 1 MiB
inline constexpr int kMaxDepth = 16;  // a Get response nests 7 deep
inline constexpr size_t kMaxItems = 16384;

struct DecodeOptions {
  size_t max_message_size = kMaxMessageSize;
  // Depth of the top item is 1; an item at depth > max_depth is rejected.
  int max_depth = kMaxDepth;
  size_t max_items = kMaxItems;
  // Optional schema hook: the type a protocol fixes for `tag`, or nullopt
  // when it does not (unknown tags, or tags whose type varies such as
  // KMIP's Attribute Value). An item whose type differs is rejected.
  std::optional<Type> (*fixed_type)(Tag tag) = nullptr;
};

// One decoded item: a view into the decoded buffer.
struct Item {
  Tag tag = 0;
  Type type = Type::kStructure;
  // Byte offset of the item's tag within the decoded buffer.
  size_t offset = 0;
  // Integer, LongInteger, Enumeration, Interval, DateTime and Boolean (0/1)
  // values, already sign- or zero-extended according to the type.
  int64_t number = 0;
  // TextString, ByteString and BigInteger: the value bytes, without padding.
  std::span<const uint8_t> bytes;
  // Structure: the children in wire order.
  std::vector<Item> children;

  // Typed views. Each asserts (in debug builds) that the type matches and
  // returns a zero value otherwise; parsers check `type` first.
  int32_t integer() const;
  int64_t long_integer() const;
  uint32_t enumeration() const;
  bool boolean() const;
  int64_t date_time() const;
  uint32_t interval() const;
  std::string_view text() const;
  std::span<const uint8_t> byte_string() const;

  // First child with `tag`, or nullptr. Only meaningful for Structures.
  const Item* Find(Tag tag) const;
  // All children with `tag`, in order.
  std::vector<const Item*> FindAll(Tag tag) const;
};

// Decodes one item that must span exactly `message`. See the contract above.
Result<Item> Decode(std::span<const uint8_t> message,
                    const DecodeOptions& options = {});
// The result would point into a destroyed temporary: keep the buffer alive.
Result<Item> Decode(const std::vector<uint8_t>&& message,
                    const DecodeOptions& options = {}) = delete;

// For a transport that reads a message from a stream: the total size
// (header included) of the message whose first kHeaderSize bytes are
// `header`. Checks that the item is a Structure (every KMIP message is) and
// that the size is a multiple of 8 and at most `max_message_size`, so the
// caller can bound its read before allocating.
Result<size_t> MessageSize(std::span<const uint8_t> header,
                           size_t max_message_size = kMaxMessageSize);

// Streaming encoder. Structures are opened with BeginStructure and closed
// with EndStructure (or Structure(tag, fn)); their lengths are patched in
// when they close. Errors (an unclosed structure, a value over 4 GiB) are
// sticky and reported by Finish.
//
// The output is a std::vector: do not put key material through a Writer
// (vcrypt's requests never carry keys).
class Writer {
 public:
  Writer() = default;

  void BeginStructure(Tag tag);
  void EndStructure();
  template <typename F>
  void Structure(Tag tag, F&& body) {
    BeginStructure(tag);
    body();
    EndStructure();
  }

  void Integer(Tag tag, int32_t value);
  void LongInteger(Tag tag, int64_t value);
  // `value` is big-endian two's complement of any length (empty means 0);
  // it is sign-extended on the left to a multiple of 8 bytes.
  void BigInteger(Tag tag, std::span<const uint8_t> value);
  void Enumeration(Tag tag, uint32_t value);
  void Boolean(Tag tag, bool value);
  void TextString(Tag tag, std::string_view value);
  void ByteString(Tag tag, std::span<const uint8_t> value);
  void DateTime(Tag tag, int64_t value);
  void Interval(Tag tag, uint32_t value);

  // Re-encodes a decoded item (and its children).
  void Append(const Item& item);
  // Appends bytes that already are one or more complete, canonical TTLV
  // items (e.g. a payload built by another Writer).
  void AppendEncoded(std::span<const uint8_t> items);

  // Number of bytes written so far.
  size_t size() const { return buf_.size(); }

  // The encoding, or the first error (kInvalidArgument / kInternal).
  Result<std::vector<uint8_t>> Finish() &&;

 private:
  void Header(Tag tag, Type type, size_t length);
  void Pad();
  void Fail(std::string message);

  std::vector<uint8_t> buf_;
  std::vector<size_t> open_;  // offsets of open structures' headers
  std::optional<Error> error_;
};

}  // namespace vcrypt::ttlv

#endif  // VCRYPT_KEYPROVIDERS_STANDARD_TTLV_H_
