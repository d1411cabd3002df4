// A reference to a VM's key-encryption key: what a key provider needs to
// produce the KEK again (keyproviders/key_provider.h), and what every volume
// token of the VM stores (dmtools/token.h). Here, below both, so that the
// block layer need not include the key providers.
#ifndef VCRYPT_COMMON_KEK_REF_H_
#define VCRYPT_COMMON_KEK_REF_H_

#include <nlohmann/json.hpp>
#include <string>

namespace vcrypt {

// KekRef::data never holds plaintext key material.
struct KekRef {
  std::string kek_id;
  nlohmann::json data = nlohmann::json::object();  // provider-specific
};

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_KEK_REF_H_
