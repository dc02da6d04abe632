// The Markets page is served by the market-data API under <its prefix>/ui/ (inside Airflow:
// /marketflow/ui/), so every asset URL is relative; the build lands next to the API's code (gitignored).
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    outDir: "../plugins/marketflow/api/ui_dist",
    emptyOutDir: true,
    chunkSizeWarningLimit: 600,
  },
});
