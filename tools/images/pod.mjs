// tools/images/pod.mjs MANIFEST NODE [IMAGE] — the Pod the DaemonSet of MANIFEST
// runs on node NODE, as its controller makes it: the template's metadata and
// spec, named after the DaemonSet and the node, with the node's name set
// (spec.nodeName; a node selector is the scheduler's business, not the pod's).
// IMAGE replaces the image of every container (where the images were pushed).
// Prints it as YAML, for `podman kube play` (a real engine in the guest: make
// check-images). Validated against the Pod schema first (kubernetes-models).
import { readFileSync } from "node:fs";
import { parseAllDocuments, stringify } from "yaml";
import { Pod } from "kubernetes-models/v1/Pod";

const [file, node, image] = process.argv.slice(2);
if (!file || !node) {
  console.error("usage: tools/images/pod.mjs MANIFEST NODE [IMAGE]");
  process.exit(2);
}
const docs = parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJS());
const ds = docs.find((d) => d && d.kind === "DaemonSet");
if (!ds) {
  console.error(`${file}: no DaemonSet`);
  process.exit(2);
}
const { nodeSelector, ...spec } = structuredClone(ds.spec.template.spec);
void nodeSelector;
spec.nodeName = node;
if (image) for (const c of spec.containers) c.image = image;
const pod = new Pod({
  metadata: { ...ds.spec.template.metadata, name: `${ds.metadata.name}-${node}`, namespace: ds.metadata.namespace },
  spec,
});
pod.validate();
process.stdout.write(stringify(pod.toJSON()));
