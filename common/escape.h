// Making untrusted strings safe to put into a log line or an error message.
//
// A name, path or op from a request, a header or a file may hold a
// newline, an escape sequence or any byte: printed as is, it could forge a
// log or audit line or drive a terminal. These helpers keep printable ASCII
// and write everything else (and the backslash) as an escape, so one line
// stays one line and can be read back unambiguously.
#ifndef VCRYPT_COMMON_ESCAPE_H_
#define VCRYPT_COMMON_ESCAPE_H_

#include <string>
#include <string_view>

namespace vcrypt {

// 0x20..0x7e.
inline bool PrintableAscii(unsigned char c) { return c >= 0x20 && c < 0x7f; }

// Appends "\xNN" (lower-case hex).
void AppendHexEscape(std::string& out, unsigned char c);

// `s` with '\' as "\\" and every byte outside PrintableAscii as "\xNN".
// When `max_bytes` > 0 and `s` is longer, only its first `max_bytes` bytes
// are kept, followed by "...": a request cannot make a log line huge.
std::string EscapeForMessage(std::string_view s, size_t max_bytes = 0);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_ESCAPE_H_
