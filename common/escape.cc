#include "common/escape.h"

namespace vcrypt {

void AppendHexEscape(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\x";
  out += kHex[c >> 4];
  out += kHex[c & 0xf];
}

std::string EscapeForMessage(std::string_view s, size_t max_bytes) {
  const bool cut = max_bytes > 0 && s.size() > max_bytes;
  if (cut) s = s.substr(0, max_bytes);
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (PrintableAscii(c)) {
      out += static_cast<char>(c);
    } else {
      AppendHexEscape(out, c);
    }
  }
  if (cut) out += "...";
  return out;
}

}  // namespace vcrypt
