// Test/benchmark tool, never installed: writes a volume's DEK to a file so
// that a baseline (`cryptsetup open --volume-key-file`) can open the very
// same volume. Uses the real code paths (token parse, native provider,
// AES-GCM unwrap). Only for native providers.
//   vcrypt_dek_export STATE_DIR DEVICE OUT_FILE
#include <fcntl.h>
#include <unistd.h>

#include <iostream>

#include "common/aead.h"
#include "common/handles.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "keyproviders/native/native_provider.h"

int main(int argc, char** argv) {
  using namespace vcrypt;
  if (argc != 4) {
    std::cerr << "usage: vcrypt_dek_export STATE_DIR DEVICE OUT_FILE\n";
    return 2;
  }
  auto die = [](const Error& e) {
    std::cerr << "vcrypt_dek_export: " << e.message << "\n";
    return 1;
  };
  auto hdr = ReadHeader(argv[2]);
  if (!hdr.ok()) return die(hdr.error());
  if (!hdr->token_json) return die(MakeError(ErrorCode::kInvalidVolume, "no vcrypt token"));
  auto tok = VcryptToken::Parse(*hdr->token_json);
  if (!tok.ok()) return die(tok.error());
  auto p = NativeProvider::Load(tok->provider_name,
                                std::string(argv[1]) + "/providers/" + tok->provider_name);
  if (!p.ok()) return die(p.error());
  auto kek = (*p)->GetKek(tok->kek);
  if (!kek.ok()) return die(kek.error());
  auto dek = UnwrapKey(*kek, tok->dek, DekAad(hdr->uuid, tok->kek.kek_id, tok->provider_name));
  if (!dek.ok()) return die(dek.error());
  UniqueFd fd(open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid() || write(fd.get(), dek->data(), dek->size()) !=
                         static_cast<ssize_t>(dek->size()))
    return die(MakeError(ErrorCode::kIo, "cannot write the DEK file"));
  return 0;
}
