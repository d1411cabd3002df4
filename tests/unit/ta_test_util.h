// Helpers for tests that run the Trust Authority's services in-process.
#ifndef VCRYPT_TESTS_UNIT_TA_TEST_UTIL_H_
#define VCRYPT_TESTS_UNIT_TA_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <tss2/tss2_tpm2_types.h>

#include <optional>
#include <string>
#include <utility>

#include "common/random.h"
#include "taprotocol/jws.h"
#include "trustauthority/attestation.h"
#include "trustauthority/kps.h"
#include "trustauthority/store.h"

namespace vcrypt::testing {

// The store of a test: the SQLite database in `state_dir`.
inline std::shared_ptr<TaStore> OpenTestStore(const std::string& state_dir) {
  auto s = OpenTaStore(DefaultStoreUrl(state_dir));
  EXPECT_TRUE(s.ok()) << s.error().message;
  return s.ok() ? std::move(s).value() : nullptr;
}

// Opens both services with their state in `state_dir` (its SQLite
// database) or, given, `store`: the attestation service (PCRs 0-3 and 7 of
// SHA-256) with a fresh token-signing key, and the key provider service
// trusting that key, with a fresh primary key. Use with
// ASSERT_NO_FATAL_FAILURE.
inline void OpenTaServices(const std::string& state_dir,
                           std::optional<AttestationService>* att,
                           std::optional<KeyProviderService>* kps,
                           size_t max_outstanding = 10000,
                           std::shared_ptr<TaStore> store = nullptr) {
  if (!store) store = OpenTestStore(state_dir);
  ASSERT_TRUE(store);
  AttestationConfig c;
  c.store = store;
  c.selection = {TPM2_ALG_SHA256, {0, 1, 2, 3, 7}};
  c.max_outstanding = max_outstanding;
  auto key = EcSigningKey::Generate();
  ASSERT_TRUE(key.ok());
  auto pub = EcVerifyKey::FromPublicPem(*key->ToPublicPem());
  ASSERT_TRUE(pub.ok());
  auto a = AttestationService::Open(c, std::move(key).value());
  ASSERT_TRUE(a.ok()) << a.error().message;
  att->emplace(std::move(a).value());
  auto k = KeyProviderService::Open({store, "kps"}, std::move(pub).value(),
                                    std::move(RandomKey(32)).value());
  ASSERT_TRUE(k.ok()) << k.error().message;
  kps->emplace(std::move(k).value());
}

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_TA_TEST_UTIL_H_
