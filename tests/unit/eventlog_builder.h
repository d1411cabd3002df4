// Builds TCG PC Client crypto-agile event logs for tests, and computes the
// PCR values a TPM would hold after the same extends, independently of
// trustauthority/eventlog.cc (written from the specification: the first
// event in the SHA-1 layout with the Spec ID event, then TCG_PCR_EVENT2
// records, all integers little-endian).
#ifndef VCRYPT_TESTS_UNIT_EVENTLOG_BUILDER_H_
#define VCRYPT_TESTS_UNIT_EVENTLOG_BUILDER_H_

#include <openssl/evp.h>
#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace vcrypt::testing {

inline std::vector<uint8_t> TestDigest(uint16_t alg,
                                       std::span<const uint8_t> data) {
  const EVP_MD* md = alg == TPM2_ALG_SHA1     ? EVP_sha1()
                     : alg == TPM2_ALG_SHA384 ? EVP_sha384()
                     : alg == TPM2_ALG_SHA512 ? EVP_sha512()
                                              : EVP_sha256();
  std::vector<uint8_t> out(EVP_MD_get_size(md));
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr);
  return out;
}

inline std::vector<uint8_t> TestBytes(const std::string& s) {
  return {s.begin(), s.end()};
}

// UEFI_VARIABLE_DATA (EV_EFI_VARIABLE_DRIVER_CONFIG's data) of an
// EFI_GLOBAL_VARIABLE, as firmware measures SecureBoot into PCR 7.
inline std::vector<uint8_t> UefiVariable(const std::string& name,
                                         std::vector<uint8_t> value) {
  std::vector<uint8_t> d = {0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11,
                            0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c};
  for (uint64_t v : {uint64_t{name.size()}, uint64_t{value.size()}})
    for (int i = 0; i < 8; ++i) d.push_back(static_cast<uint8_t>(v >> 8 * i));
  for (char c : name) d.insert(d.end(), {static_cast<uint8_t>(c), 0});
  d.insert(d.end(), value.begin(), value.end());
  return d;
}

class EventLogBuilder {
 public:
  struct Alg {
    uint16_t id;
    uint16_t size;
  };
  // Starts the log with the Spec ID event listing `algs`.
  explicit EventLogBuilder(std::vector<Alg> algs = {{TPM2_ALG_SHA256, 32}})
      : algs_(std::move(algs)) {
    std::vector<uint8_t> spec;
    const char sig[16] = "Spec ID Event03";
    spec.insert(spec.end(), sig, sig + 16);
    U32(spec, 0);                           // platformClass
    spec.insert(spec.end(), {0, 2, 0, 2});  // minor, major, errata, uintn
    U32(spec, static_cast<uint32_t>(algs_.size()));
    for (const Alg& a : algs_) {
      U16(spec, a.id);
      U16(spec, a.size);
    }
    spec.push_back(0);  // vendorInfoSize
    U32(log_, 0);
    U32(log_, 3);  // EV_NO_ACTION
    log_.insert(log_.end(), 20, 0);
    U32(log_, static_cast<uint32_t>(spec.size()));
    log_.insert(log_.end(), spec.begin(), spec.end());
  }

  // The EV_NO_ACTION StartupLocality event (PCR 0 starts at `locality`).
  void StartupLocality(uint8_t locality) {
    std::vector<uint8_t> data = TestBytes(std::string("StartupLocality", 16));
    data.push_back(locality);
    std::vector<std::pair<uint16_t, std::vector<uint8_t>>> digests;
    for (const Alg& a : algs_)
      digests.push_back({a.id, std::vector<uint8_t>(a.size, 0)});
    Event(0, 3, digests, data);
    locality_ = locality;
  }

  // An event measuring `data` into `pcr` (a digest per algorithm of the
  // table); returns its SHA-256 digest (the one tests put in policies).
  std::vector<uint8_t> Measure(uint32_t pcr, uint32_t type,
                               std::span<const uint8_t> data) {
    std::vector<std::pair<uint16_t, std::vector<uint8_t>>> digests;
    for (const Alg& a : algs_)
      digests.push_back({a.id, TestDigest(a.id, data)});
    Event(pcr, type, digests, data);
    return TestDigest(TPM2_ALG_SHA256, data);
  }

  // A TCG_PCR_EVENT2 exactly as given (for malformed logs too).
  void Event(
      uint32_t pcr, uint32_t type,
      const std::vector<std::pair<uint16_t, std::vector<uint8_t>>>& digests,
      std::span<const uint8_t> data) {
    U32(log_, pcr);
    U32(log_, type);
    U32(log_, static_cast<uint32_t>(digests.size()));
    for (const auto& [alg, d] : digests) {
      U16(log_, alg);
      log_.insert(log_.end(), d.begin(), d.end());
      if (alg == TPM2_ALG_SHA256 && type != 3) {
        Extend(pcr, d);
        extends_.push_back({pcr, d});
      }
    }
    U32(log_, static_cast<uint32_t>(data.size()));
    log_.insert(log_.end(), data.begin(), data.end());
  }

  const std::vector<uint8_t>& bytes() const { return log_; }
  // The SHA-256 extends a TPM gets for this log, in order.
  const std::vector<std::pair<uint32_t, std::vector<uint8_t>>>& extends()
      const {
    return extends_;
  }
  std::vector<uint8_t>& mutable_bytes() { return log_; }

  // The SHA-256 PCR value after the events so far.
  std::vector<uint8_t> Expected(uint32_t pcr) const {
    auto it = pcrs_.find(pcr);
    return it != pcrs_.end() ? it->second : Initial(pcr);
  }

 private:
  static void U16(std::vector<uint8_t>& b, uint16_t v) {
    b.push_back(static_cast<uint8_t>(v));
    b.push_back(static_cast<uint8_t>(v >> 8));
  }
  static void U32(std::vector<uint8_t>& b, uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> 8 * i));
  }
  std::vector<uint8_t> Initial(uint32_t pcr) const {
    std::vector<uint8_t> v(32, 0);
    if (pcr == 0) v[31] = locality_;
    return v;
  }
  void Extend(uint32_t pcr, const std::vector<uint8_t>& d) {
    std::vector<uint8_t> cat = Expected(pcr);
    cat.insert(cat.end(), d.begin(), d.end());
    pcrs_[pcr] = TestDigest(TPM2_ALG_SHA256, cat);
  }

  std::vector<Alg> algs_;
  std::vector<uint8_t> log_;
  uint8_t locality_ = 0;
  std::map<uint32_t, std::vector<uint8_t>> pcrs_;
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> extends_;
};

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_EVENTLOG_BUILDER_H_
