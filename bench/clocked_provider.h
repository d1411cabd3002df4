// For the trusted-provider benchmarks (trusted_bench.cc, ta_flood.cc): a
// TrustedProvider whose clock runs `offset` seconds ahead of real time.
// Setting the offset to a day before a call makes the provider's cached
// attestation token look expired, so that call attests again; the
// services keep checking real time, so the token it gets is valid.
#ifndef VCRYPT_BENCH_CLOCKED_PROVIDER_H_
#define VCRYPT_BENCH_CLOCKED_PROVIDER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "keyproviders/trusted/trusted_provider.h"

namespace vcrypt {

inline Result<std::unique_ptr<TrustedProvider>> ClockedProvider(
    const TrustedProviderConfig& cfg, const std::string& dir,
    std::atomic<int64_t>& offset) {
  TrustedProviderOptions opts;
  opts.allow_test_tcti = true;  // the benchmarks' TPM is a swtpm
  opts.now = [&offset] {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count() +
           offset.load();
  };
  return TrustedProvider::Create("bench", dir, cfg, opts);
}

}  // namespace vcrypt

#endif  // VCRYPT_BENCH_CLOCKED_PROVIDER_H_
