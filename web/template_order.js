// Template browser order for this pack's workflows/ (ComfyUI frontend extension, loaded from WEB_DIRECTORY).
//
// ComfyUI's server lists a pack's workflows in the order its glob finds the files (the directory's own order, not
// sorted), and the frontend keeps that order: its default sort ("Newest") orders by date, which custom-node
// templates lack. The titles are the file names ("01 Collect (SDXL)", ...), so sorting this pack's names by their
// leading number gives the intended order 01 -> 10. Other packs' lists are left as they are.
import { api } from "../../scripts/api.js";

function packFolder() {
  // served as /extensions/<custom_nodes folder>/template_order.js; the server keys its list by that folder name
  const parts = new URL(import.meta.url).pathname.split("/");
  const i = parts.lastIndexOf("extensions");
  return i >= 0 && i + 1 < parts.length ? decodeURIComponent(parts[i + 1]) : null;
}

const folder = packFolder();
const original = api.getWorkflowTemplates?.bind(api);
if (folder && original) {
  api.getWorkflowTemplates = async function () {
    const all = await original();
    const ours = all?.[folder];
    if (Array.isArray(ours)) {
      all[folder] = [...ours].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
    }
    return all;
  };
}
