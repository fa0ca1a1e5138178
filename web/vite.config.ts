/// <reference types="vitest/config" />
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// The gateway serves web/dist at `/` (PARLEY_GATEWAY_WEB_DIST). `npm run dev` proxies the API
// to a local gateway (PARLEY_GATEWAY_URL, default http://127.0.0.1:8001).
const gateway = process.env.PARLEY_GATEWAY_URL ?? 'http://127.0.0.1:8001';

export default defineConfig({
  plugins: [react()],
  base: '/',
  build: { outDir: 'dist', sourcemap: false, target: 'es2022' },
  server: {
    proxy: {
      '/v1': gateway,
      '/favicon.ico': gateway,
      '/ws': { target: gateway.replace(/^http/, 'ws'), ws: true },
    },
  },
  test: {
    environment: 'jsdom',
    globals: true,
    include: ['src/**/*.test.ts', 'src/**/*.test.tsx'],
  },
});
