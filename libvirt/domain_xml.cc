#include "libvirt/domain_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#include <climits>

#include "common/names.h"
#include "libvirt/handles.h"

namespace vcrypt {
namespace {

const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

bool IsElement(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, X(name)) == 0;
}

const xmlNode* FirstChild(const xmlNode* parent, const char* name) {
  for (const xmlNode* c = parent->children; c != nullptr; c = c->next)
    if (IsElement(c, name)) return c;
  return nullptr;
}

std::string Prop(const xmlNode* n, const char* name) {
  if (n == nullptr) return "";
  XmlString v(xmlGetProp(n, X(name)));
  return v ? reinterpret_cast<const char*>(v.get()) : "";
}

std::string Content(const xmlNode* n) {
  if (n == nullptr) return "";
  XmlString v(xmlNodeGetContent(n));
  return v ? reinterpret_cast<const char*>(v.get()) : "";
}

bool InVcryptNs(const xmlNode* n, const char* name) {
  return IsElement(n, name) && n->ns != nullptr && n->ns->href != nullptr &&
         xmlStrcmp(n->ns->href, X(kVcryptMetadataUri)) == 0;
}

// The entries of a <volumes> element in the vcrypt namespace.
Result<std::vector<VolumeMeta>> ReadVolumes(const xmlNode* volumes) {
  std::vector<VolumeMeta> out;
  for (const xmlNode* c = volumes->children; c != nullptr; c = c->next) {
    if (!InVcryptNs(c, "volume")) continue;
    if (out.size() == kMaxMetadataVolumes)
      return MakeError(ErrorCode::kInvalidArgument,
                       "the vcrypt metadata lists more than " +
                           std::to_string(kMaxMetadataVolumes) + " volumes");
    VolumeMeta m{Prop(c, "vm"),
                 Prop(c, "disk"),
                 Prop(c, "uuid"),
                 Prop(c, "provider"),
                 Prop(c, "provider-type"),
                 Prop(c, "kek-id"),
                 Prop(c, "primary-key-id"),
                 Prop(c, "image")};
    VCRYPT_RETURN_IF_ERROR(ValidateVolumeMeta(m));
    for (const auto& o : out)
      if (o.volume() == m.volume())
        return MakeError(
            ErrorCode::kInvalidArgument,
            "the vcrypt metadata lists " + m.volume().Label() + " twice");
    out.push_back(std::move(m));
  }
  return out;
}

Result<std::string> Serialise(xmlDoc* doc, xmlNode* node) {
  XmlBufferHandle buf(xmlBufferCreate());
  if (!buf || xmlNodeDump(buf.get(), doc, node, 0, 0) < 0)
    return MakeError(ErrorCode::kInternal, "cannot serialise XML");
  return std::string(reinterpret_cast<const char*>(xmlBufferContent(buf.get())),
                     static_cast<size_t>(xmlBufferLength(buf.get())));
}

}  // namespace

std::string OneLine(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

std::string MappingPath(const VolumeRef& v) {
  return "/dev/mapper/" + MappingName(v.vm, v.disk);
}

Result<std::optional<VolumeRef>> ParseMappingPath(std::string_view path) {
  if (path.substr(0, kVcryptMapperPrefix.size()) != kVcryptMapperPrefix)
    return std::optional<VolumeRef>();
  std::string_view rest = path.substr(kVcryptMapperPrefix.size());
  auto dash = rest.rfind('-');
  if (dash == std::string_view::npos)
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string(path) +
                         " is not a vcrypt mapping: no '-' between VM and "
                         "disk name");
  VolumeRef v{std::string(rest.substr(0, dash)),
              std::string(rest.substr(dash + 1))};
  auto st = ValidateVolumeNames(v.vm, v.disk);
  if (!st.ok())
    return MakeError(
        ErrorCode::kInvalidArgument,
        std::string(path) + " is not a vcrypt mapping: " + st.error().message);
  return std::optional<VolumeRef>(std::move(v));
}

Result<DomainXml> ParseDomainXml(std::string_view xml) {
  if (xml.size() > static_cast<size_t>(INT_MAX))
    return MakeError(ErrorCode::kInvalidArgument, "domain XML is too large");
  XmlParserCtxtHandle ctxt(xmlNewParserCtxt());
  if (!ctxt)
    return MakeError(ErrorCode::kInternal, "cannot allocate an XML parser");
  // No network, no DTD loading, no entity substitution; errors come back
  // here instead of going to stderr.
  XmlDocHandle doc(xmlCtxtReadMemory(
      ctxt.get(), xml.data(), static_cast<int>(xml.size()), "domain.xml",
      nullptr, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (!doc) {
    const xmlError* e = xmlCtxtGetLastError(ctxt.get());
    std::string why = e && e->message ? OneLine(e->message) : "parse error";
    if (e) why += " (line " + std::to_string(e->line) + ")";
    return MakeError(ErrorCode::kInvalidArgument,
                     "domain XML is not well-formed: " + why);
  }
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr || !IsElement(root, "domain"))
    return MakeError(ErrorCode::kInvalidArgument,
                     "not a libvirt domain XML document (the root element is "
                     "not <domain>)");
  DomainXml out;
  out.name = Content(FirstChild(root, "name"));
  if (const xmlNode* md = FirstChild(root, "metadata")) {
    for (const xmlNode* c = md->children; c != nullptr; c = c->next) {
      if (!InVcryptNs(c, "volumes")) continue;
      VCRYPT_ASSIGN_OR_RETURN(out.vcrypt_volumes, ReadVolumes(c));
      break;
    }
  }
  const xmlNode* devices = FirstChild(root, "devices");
  if (devices == nullptr) return out;
  for (xmlNode* d = devices->children; d != nullptr; d = d->next) {
    if (!IsElement(d, "disk")) continue;
    DomainDisk disk;
    disk.type = Prop(d, "type");
    disk.device = Prop(d, "device");
    const xmlNode* source = FirstChild(d, "source");
    disk.source = Prop(source, "dev");
    if (disk.source.empty()) disk.source = Prop(source, "file");
    const xmlNode* target = FirstChild(d, "target");
    disk.target = Prop(target, "dev");
    disk.bus = Prop(target, "bus");
    disk.cache = Prop(FirstChild(d, "driver"), "cache");
    VCRYPT_ASSIGN_OR_RETURN(disk.xml, Serialise(doc.get(), d));
    out.disks.push_back(std::move(disk));
  }
  return out;
}

Result<std::vector<VcryptDisk>> FindVcryptDisks(const DomainXml& domain) {
  std::vector<VcryptDisk> out;
  for (const auto& d : domain.disks) {
    VCRYPT_ASSIGN_OR_RETURN(std::optional<VolumeRef> v,
                            ParseMappingPath(d.source));
    if (!v) continue;
    bool seen = false;
    for (const auto& o : out) seen = seen || o.volume == *v;
    if (!seen) out.push_back({*v, d.source, d.target});
  }
  return out;
}

std::optional<DomainDisk> FindDiskBySource(const DomainXml& domain,
                                           std::string_view path) {
  for (const auto& d : domain.disks)
    if (d.source == path) return d;
  return std::nullopt;
}

Result<std::string> BuildDiskXml(std::string_view source,
                                 std::string_view target) {
  VCRYPT_ASSIGN_OR_RETURN(std::optional<VolumeRef> v, ParseMappingPath(source));
  if (!v)
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string(source) + " is not a vcrypt mapping path");
  VCRYPT_RETURN_IF_ERROR(ValidateTargetName(target));
  const std::string src(source), tgt(target);

  XmlDocHandle doc(xmlNewDoc(X("1.0")));
  if (!doc) return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  // Nodes belong to the document from creation on, so freeing the
  // document frees them on every path.
  xmlNode* disk = xmlNewDocNode(doc.get(), nullptr, X("disk"), nullptr);
  if (disk == nullptr)
    return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  xmlDocSetRootElement(doc.get(), disk);
  xmlNode* driver = xmlNewChild(disk, nullptr, X("driver"), nullptr);
  xmlNode* src_node = xmlNewChild(disk, nullptr, X("source"), nullptr);
  xmlNode* tgt_node = xmlNewChild(disk, nullptr, X("target"), nullptr);
  if (driver == nullptr || src_node == nullptr || tgt_node == nullptr)
    return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  bool ok = xmlNewProp(disk, X("type"), X("block")) &&
            xmlNewProp(disk, X("device"), X("disk")) &&
            xmlNewProp(driver, X("name"), X("qemu")) &&
            xmlNewProp(driver, X("type"), X("raw")) &&
            xmlNewProp(driver, X("cache"), X("none")) &&
            xmlNewProp(driver, X("io"), X("native")) &&
            xmlNewProp(src_node, X("dev"), X(src.c_str())) &&
            xmlNewProp(tgt_node, X("dev"), X(tgt.c_str())) &&
            xmlNewProp(tgt_node, X("bus"), X("virtio"));
  if (!ok) return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  return Serialise(doc.get(), disk);
}

Status ValidateVolumeMeta(const VolumeMeta& m) {
  auto bad = [&](const std::string& why) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "vcrypt metadata entry " + m.vm + "/" + m.disk + ": " + why);
  };
  if (Status s = ValidateVolumeNames(m.vm, m.disk); !s.ok())
    return bad(s.error().message);
  if (!IsUuidText(m.uuid)) return bad("'uuid' is not a UUID");
  if (Status s = ValidateProviderName(m.provider); !s.ok())
    return bad(s.error().message);
  if (m.provider_type != "native" && m.provider_type != "standard" &&
      m.provider_type != "trusted")
    return bad("'provider-type' is not native, standard or trusted");
  auto printable_id = [](const std::string& id, bool may_be_empty) {
    if (id.empty()) return may_be_empty;
    if (id.size() > 128) return false;
    for (char c : id)
      if (c <= ' ' || c > '~') return false;
    return true;
  };
  if (!printable_id(m.kek_id, false)) return bad("bad 'kek-id'");
  if (!printable_id(m.primary_key_id, true)) return bad("bad 'primary-key-id'");
  if (!m.image.empty() &&
      (m.image[0] != '/' || m.image.size() > 4096 ||
       m.image.find("/../") != std::string::npos ||
       m.image.find('\0') != std::string::npos ||
       (m.image.size() >= 3 && m.image.substr(m.image.size() - 3) == "/..")))
    return bad("'image' must be an absolute path without '..'");
  return Status::Ok();
}

Result<std::string> BuildVolumesMetadata(const std::vector<VolumeMeta>& vols) {
  if (vols.size() > kMaxMetadataVolumes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "more than " + std::to_string(kMaxMetadataVolumes) +
                         " vcrypt volumes in one domain");
  XmlDocHandle doc(xmlNewDoc(X("1.0")));
  if (!doc) return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  xmlNode* root = xmlNewDocNode(doc.get(), nullptr, X("volumes"), nullptr);
  if (root == nullptr)
    return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  xmlDocSetRootElement(doc.get(), root);
  xmlNs* ns = xmlNewNs(root, X(kVcryptMetadataUri), nullptr);
  if (ns == nullptr)
    return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  xmlSetNs(root, ns);
  for (const auto& m : vols) {
    VCRYPT_RETURN_IF_ERROR(ValidateVolumeMeta(m));
    xmlNode* v = xmlNewChild(root, ns, X("volume"), nullptr);
    if (v == nullptr)
      return MakeError(ErrorCode::kInternal, "cannot allocate XML");
    bool ok = xmlNewProp(v, X("vm"), X(m.vm.c_str())) &&
              xmlNewProp(v, X("disk"), X(m.disk.c_str())) &&
              xmlNewProp(v, X("uuid"), X(m.uuid.c_str())) &&
              xmlNewProp(v, X("provider"), X(m.provider.c_str())) &&
              xmlNewProp(v, X("provider-type"), X(m.provider_type.c_str())) &&
              xmlNewProp(v, X("kek-id"), X(m.kek_id.c_str()));
    if (ok && !m.primary_key_id.empty())
      ok = xmlNewProp(v, X("primary-key-id"), X(m.primary_key_id.c_str()));
    if (ok && !m.image.empty())
      ok = xmlNewProp(v, X("image"), X(m.image.c_str()));
    if (!ok) return MakeError(ErrorCode::kInternal, "cannot allocate XML");
  }
  return Serialise(doc.get(), root);
}

Result<std::vector<VolumeMeta>> ParseVolumesMetadata(std::string_view xml) {
  if (xml.empty()) return std::vector<VolumeMeta>();
  if (xml.size() > (1u << 20))
    return MakeError(ErrorCode::kInvalidArgument,
                     "vcrypt metadata is too large");
  XmlParserCtxtHandle ctxt(xmlNewParserCtxt());
  if (!ctxt)
    return MakeError(ErrorCode::kInternal, "cannot allocate an XML parser");
  XmlDocHandle doc(xmlCtxtReadMemory(
      ctxt.get(), xml.data(), static_cast<int>(xml.size()), "metadata.xml",
      nullptr, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (!doc)
    return MakeError(ErrorCode::kInvalidArgument,
                     "vcrypt metadata is not well-formed XML");
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr || !InVcryptNs(root, "volumes"))
    return MakeError(ErrorCode::kInvalidArgument,
                     "vcrypt metadata is not a <volumes> element in " +
                         std::string(kVcryptMetadataUri));
  return ReadVolumes(root);
}

Status ValidateTargetName(std::string_view target) {
  bool ok =
      (target.size() == 3 || target.size() == 4) && target.substr(0, 2) == "vd";
  for (size_t i = 2; ok && i < target.size(); ++i)
    ok = target[i] >= 'a' && target[i] <= 'z';
  if (!ok)
    return MakeError(ErrorCode::kInvalidArgument,
                     "target '" + std::string(target) +
                         "' is not allowed: use vd followed by one or two "
                         "letters a-z (e.g. vdb)");
  return Status::Ok();
}

Result<std::string> ChooseTarget(const std::set<std::string>& used,
                                 const std::optional<std::string>& requested) {
  if (requested) {
    VCRYPT_RETURN_IF_ERROR(ValidateTargetName(*requested));
    if (used.count(*requested))
      return MakeError(ErrorCode::kExists,
                       "target " + *requested +
                           " is already used by another disk of the domain; "
                           "choose another --target or leave it out");
    return *requested;
  }
  // The order in which Linux names virtio disks: vda..vdz, vdaa..vdzz.
  for (char a = 'a'; a <= 'z'; ++a) {
    std::string t = std::string("vd") + a;
    if (!used.count(t)) return t;
  }
  for (char a = 'a'; a <= 'z'; ++a) {
    for (char b = 'a'; b <= 'z'; ++b) {
      std::string t = std::string("vd") + a + b;
      if (!used.count(t)) return t;
    }
  }
  return MakeError(ErrorCode::kExists,
                   "every target vda..vdzz of the domain is taken");
}

std::set<std::string> UsedTargets(
    const std::vector<const DomainXml*>& domains) {
  std::set<std::string> used;
  for (const DomainXml* d : domains)
    for (const auto& disk : d->disks)
      if (!disk.target.empty()) used.insert(disk.target);
  return used;
}

}  // namespace vcrypt
