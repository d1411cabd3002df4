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
