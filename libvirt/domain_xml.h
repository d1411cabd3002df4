// libvirt domain XML, as far as vcrypt needs it: the <disk> element that
// attaches a vcrypt mapping, and the disks of a domain (which of them are
// vcrypt volumes, which targets are taken). Built and parsed with libxml2's
// tree API, never by pasting strings.
#ifndef VCRYPT_LIBVIRT_DOMAIN_XML_H_
#define VCRYPT_LIBVIRT_DOMAIN_XML_H_

#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vcrypt {

inline constexpr std::string_view kVcryptMapperPrefix = "/dev/mapper/vcrypt-";

struct VolumeRef {
  std::string vm, disk;
  std::string Label() const { return vm + "/" + disk; }  // "VM/DISK"
  bool operator==(const VolumeRef&) const = default;
};

// "/dev/mapper/vcrypt-<vm>-<disk>".
std::string MappingPath(const VolumeRef& v);

// The volume behind a vcrypt mapping path. The name splits at its last
// '-' (disk names have none). std::nullopt when `path` is not under
// /dev/mapper/vcrypt-; kInvalidArgument when it is but the names do not
// pass the VM/disk name rules (such a mapping is never vcrypt's).
Result<std::optional<VolumeRef>> ParseMappingPath(std::string_view path);

// One <disk> of a domain.
struct DomainDisk {
  std::string type;    // disk@type: block, file, network, ...
  std::string device;  // disk@device: disk, cdrom, ...
  std::string source;  // source@dev, else source@file; "" if neither
  std::string target;  // target@dev ("" if missing)
  std::string bus;     // target@bus
  std::string xml;     // the <disk> element itself, serialised
};

struct DomainXml {
  std::string name;
  std::vector<DomainDisk> disks;  // document order
};

// Parses a domain XML document (virDomainGetXMLDesc output, or what
// libvirt hands a hook on stdin). No network, no DTD, no entity
// expansion. kInvalidArgument when it is not well-formed or its root is
// not <domain>.
Result<DomainXml> ParseDomainXml(std::string_view xml);

struct VcryptDisk {
  VolumeRef volume;
  std::string source;  // the mapping path
  std::string target;
};

// The domain's disks whose source is a vcrypt mapping, in document order,
// each volume once. kInvalidArgument if a source under /dev/mapper/vcrypt-
// has names that do not pass validation.
Result<std::vector<VcryptDisk>> FindVcryptDisks(const DomainXml& domain);

// The disk whose source is `path`, if any.
std::optional<DomainDisk> FindDiskBySource(const DomainXml& domain,
                                           std::string_view path);

// What `vcryptctl attach` adds: a raw virtio disk on a block device,
//   <disk type='block' device='disk'>
//     <driver name='qemu' type='raw' cache='none' io='native'/>
//     <source dev='SOURCE'/>
//     <target dev='TARGET' bus='virtio'/>
//   </disk>
// kInvalidArgument if `source` is not a vcrypt mapping path or `target`
// is not a valid target name.
Result<std::string> BuildDiskXml(std::string_view source,
                                 std::string_view target);

// Target device names vcrypt uses: ^vd[a-z]{1,2}$. kInvalidArgument
// otherwise.
Status ValidateTargetName(std::string_view target);

// The target for a new disk. With `requested`: that name, if valid and
// not in `used` (kExists if used). Without: the first of vda..vdz,
// vdaa..vdzz not in `used` (kExists when all are taken).
Result<std::string> ChooseTarget(const std::set<std::string>& used,
                                 const std::optional<std::string>& requested);

// Every target dev name of the given domains' disks.
std::set<std::string> UsedTargets(const std::vector<const DomainXml*>& domains);

// `s` as one line for an error message: inner line breaks become spaces,
// trailing newlines and spaces (libvirt's and libxml2's) are dropped.
std::string OneLine(std::string s);

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_DOMAIN_XML_H_
