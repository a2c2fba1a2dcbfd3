import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

// The gateway serves web/dist at `/`; relative asset paths let it also sit behind a
// reverse proxy under a sub-path. `npm run dev` proxies the API to a running gateway.
const gateway = process.env.CHATGATE_URL || 'http://127.0.0.1:8000'
const api = ['/conv', '/conversations', '/prompts', '/config', '/healthz']

export default defineConfig({
  base: './',
  plugins: [vue()],
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 900 },
  server: {
    proxy: Object.fromEntries(api.map((p) => [p, { target: gateway, changeOrigin: true }])),
  },
})
