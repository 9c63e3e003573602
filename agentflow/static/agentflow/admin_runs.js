// The admin's run list: refresh the rows of runs that are still going (status, steps, duration, tokens,
// cost, last event) every few seconds, from the admin's live/ view, until every listed run has ended.

const ACTIVE = new Set(["queued", "running", "waiting"]);

export function refreshRunningRows({ url, intervalMs = 2000, root = document }) {
  const rows = () => {
    const found = new Map();
    for (const box of root.querySelectorAll("#result_list input.action-select")) {
      found.set(box.value, box.closest("tr"));
    }
    return found;
  };
  const statusOf = (row) => row.querySelector(".field-status_display span")?.textContent.trim().toLowerCase();
  let active = new Set([...rows()].filter(([, row]) => ACTIVE.has(statusOf(row))).map(([id]) => id));

  async function refresh() {
    if (!active.size) return;
    const query = new URLSearchParams([...active].map((id) => ["id", id]));
    try {
      const response = await fetch(`${url}?${query}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        const { rows: data } = await response.json();
        const listed = rows();
        for (const [id, row] of Object.entries(data)) {
          const tr = listed.get(id);
          if (!tr) continue;
          for (const [field, html] of Object.entries(row.cells)) {
            const cell = tr.querySelector(`.field-${field}`);
            // The server's own rendering of the cell (its display methods escape what they show).
            if (cell && cell.innerHTML !== html) cell.innerHTML = html;
          }
          if (!row.active) active.delete(id);
        }
      }
    } catch (error) {
      console.warn("agentflow: could not refresh the run list", error);
    }
    if (active.size) setTimeout(refresh, intervalMs);
  }
  refresh();
}
