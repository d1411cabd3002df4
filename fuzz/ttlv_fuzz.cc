// libFuzzer target for the TTLV decoder and KMIP response parsing
// (keyproviders/standard/ttlv.*, kmip.*). Built by fuzz/CMakeLists.txt
// (target vcrypt_fuzz_ttlv) and run by `scripts/fuzz.sh ttlv`; seeds are the
// golden vectors in tests/kmip/golden/, dictionary fuzz/kmip.dict.
//
// Besides "no crash, no UB, no leak" it checks properties that would
// otherwise hide bugs, and aborts when one fails:
//  - decoding is canonical: whatever decodes re-encodes to the same bytes;
//  - MessageSize agrees with Decode about the length of a message;
//  - every error is kInvalidArgument (malformed) or kKeyUnavailable (a
//    KMIP result), with a non-empty message;
//  - the parsers, run on every response item and on every item MatchResponse
//    returns for a few typical requests, never fail any other way.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "keyproviders/standard/kmip.h"
#include "keyproviders/standard/ttlv.h"

namespace {

using vcrypt::Error;
using vcrypt::ErrorCode;
namespace kmip = vcrypt::kmip;
namespace ttlv = vcrypt::ttlv;

[[noreturn]] void Die(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "ttlv_fuzz: %s %s\n", what, detail.c_str());
  std::abort();
}

void CheckError(const Error& e) {
  if (e.message.empty()) Die("empty error message");
  if (e.code != ErrorCode::kInvalidArgument &&
      e.code != ErrorCode::kKeyUnavailable) {
    Die("unexpected error code", e.message);
  }
}

template <typename R>
void Check(const R& r) {
  if (!r.ok()) CheckError(r.error());
}

void CheckCanonical(const ttlv::Item& item, std::span<const uint8_t> in) {
  ttlv::Writer w;
  w.Append(item);
  auto again = std::move(w).Finish();
  if (!again.ok()) Die("re-encoding failed", again.error().message);
  if (again->size() != in.size() ||
      !std::equal(again->begin(), again->end(), in.begin())) {
    Die("decode/encode is not the identity");
  }
}

const std::vector<kmip::EncodedRequest>& Requests() {
  static const std::vector<kmip::EncodedRequest> requests = [] {
    std::vector<kmip::EncodedRequest> out;
    auto add = [&](std::vector<kmip::RequestItem> items,
                   kmip::RequestOptions o) {
      auto r = kmip::EncodeRequest(items, o);
      if (!r.ok()) Die("cannot build request", r.error().message);
      out.push_back(std::move(r).value());
    };
    add({kmip::MakeGet("1")}, {});
    add({kmip::MakeGet("1"), kmip::MakeGet("2"), kmip::MakeGet("3")}, {});
    add({kmip::MakeCreateAes256("k"), kmip::MakeActivate("")}, {});
    kmip::RequestOptions no_ids;
    no_ids.batch_item_ids = false;
    no_ids.version = {1, 1};
    add({kmip::MakeGet("1")}, no_ids);
    return out;
  }();
  return requests;
}

void ParseEverything(const kmip::ResponseItem* item) {
  Check(kmip::ParseCreate(item));
  Check(kmip::ParseActivate(item, "1"));
  Check(kmip::ParseRevoke(item, "1"));
  Check(kmip::ParseDestroy(item, "1"));
  Check(kmip::ParseGetSymmetricKey(item));
  Check(kmip::ParseGetAes256(item, "1"));
  Check(kmip::ParseLocate(item));
  Check(kmip::ParseDiscoverVersions(item));
  auto versions = kmip::ParseDiscoverVersions(item);
  if (versions.ok()) Check(kmip::SelectVersion(*versions));
  Check(kmip::ParseQuery(item));
  auto attrs = kmip::ParseGetAttributes(item);
  Check(attrs);
  if (attrs.ok()) Check(kmip::SummarizeAttributes(attrs->attributes));
  if (item != nullptr) {
    auto err = kmip::ResultErrorOf(*item, kmip::Operation::kGet);
    if (err.has_value() && err->Describe().empty()) Die("empty Describe");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> in(data, size);

  // Generic TTLV, then with KMIP's type table.
  auto plain = ttlv::Decode(in);
  Check(plain);
  if (plain.ok()) CheckCanonical(*plain, in);
  ttlv::DecodeOptions options;
  options.fixed_type = &kmip::KmipFixedType;
  auto typed = ttlv::Decode(in, options);
  Check(typed);
  if (typed.ok()) {
    if (!plain.ok()) Die("KMIP-typed decode accepted what plain rejected");
    CheckCanonical(*typed, in);
  }
  if (size >= ttlv::kHeaderSize) {
    auto n = ttlv::MessageSize(in.first(ttlv::kHeaderSize));
    Check(n);
    if (plain.ok() && plain->type == ttlv::Type::kStructure &&
        (!n.ok() || *n != size)) {
      Die("MessageSize disagrees with Decode");
    }
  }

  auto response = kmip::DecodeResponse(in);
  Check(response);
  if (!response.ok()) return 0;
  if (!typed.ok()) Die("DecodeResponse accepted what Decode rejected");
  CheckCanonical(response->root, in);
  for (const kmip::ResponseItem& item : response->items) {
    ParseEverything(&item);
  }
  for (const kmip::EncodedRequest& request : Requests()) {
    auto matched = kmip::MatchResponse(request, *response);
    Check(matched);
    if (!matched.ok()) continue;
    if (matched->size() != request.operations.size()) {
      Die("MatchResponse returned the wrong number of items");
    }
    for (const kmip::ResponseItem* item : *matched) ParseEverything(item);
  }
  return 0;
}
