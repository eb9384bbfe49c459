// Parse each query of a corpus file with Grafana's own LogQL grammar (@grafana/lezer-logql)
// and print, per query, "ok" or "error" (a parse tree holding an error node), tab, the query.
// usage: node lezer_check.cjs <node_modules dir> <corpus file>
const path = require("path");
const fs = require("fs");
const { parser } = require(path.join(process.argv[2], "@grafana/lezer-logql"));
const text = fs.readFileSync(process.argv[3], "utf8");
for (const raw of text.split("\n")) {
  const q = raw.trim();
  if (q === "" || q.startsWith("#")) continue;
  let bad = false;
  parser.parse(q).iterate({
    enter: (n) => {
      if (n.type.isError) bad = true;
    },
  });
  console.log(`${bad ? "error" : "ok"}\t${q}`);
}
