#include "common/base64.h"

#include <openssl/evp.h>

namespace vcrypt {

std::string Base64Encode(std::span<const uint8_t> data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          data.data(), static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::vector<uint8_t>> Base64Decode(std::string_view text) {
  auto bad = [] {
    return MakeError(ErrorCode::kInvalidArgument, "malformed base64");
  };
  if (text.size() % 4 != 0) return bad();
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                 (c >= '0' && c <= '9') || c == '+' || c == '/';
    bool pad = c == '=' && i >= text.size() - 2 &&
               (i == text.size() - 1 || text[i + 1] == '=');
    if (!alnum && !pad) return bad();
  }
  std::vector<uint8_t> out(3 * (text.size() / 4));
  int n = EVP_DecodeBlock(out.data(),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return bad();
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') ++pad;
  if (text.size() > 1 && text[text.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

}  // namespace vcrypt
