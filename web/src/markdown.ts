/**
 * Markdown for text messages: `marked` (GFM, well kept, fast, no React coupling) renders,
 * `marked-highlight` + `highlight.js` (the marked project's own highlighting hook and the most
 * used highlighter; core plus a handful of languages keeps the bundle small) colour code
 * blocks, and `DOMPurify` sanitizes the HTML before it reaches the page — message content is
 * untrusted.
 */
import DOMPurify from 'dompurify';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import python from 'highlight.js/lib/languages/python';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';
import { Marked } from 'marked';
import { markedHighlight } from 'marked-highlight';

for (const [name, lang] of Object.entries({ bash, javascript, json, python, sql, typescript, xml, yaml }))
  hljs.registerLanguage(name, lang);
hljs.registerAliases(['sh', 'shell', 'console'], { languageName: 'bash' });
hljs.registerAliases(['js', 'jsx'], { languageName: 'javascript' });
hljs.registerAliases(['ts', 'tsx'], { languageName: 'typescript' });
hljs.registerAliases(['py'], { languageName: 'python' });
hljs.registerAliases(['html'], { languageName: 'xml' });
hljs.registerAliases(['yml'], { languageName: 'yaml' });

const marked = new Marked(
  markedHighlight({
    emptyLangClass: 'hljs',
    langPrefix: 'hljs language-',
    highlight(code, lang) {
      const language = lang && hljs.getLanguage(lang) ? lang : null;
      if (language) return hljs.highlight(code, { language }).value;
      return code.length < 20000 ? hljs.highlightAuto(code).value : code.replace(/[&<>]/g, (c) => `&#${c.charCodeAt(0)};`);
    },
  }),
  { gfm: true, breaks: true, async: false },
);

let hooked = false;
function hook(): void {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (node.tagName === 'A') {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer nofollow');
    }
  });
}

export function renderMarkdown(src: string): string {
  hook();
  const html = marked.parse(src ?? '') as string;
  return DOMPurify.sanitize(html, { USE_PROFILES: { html: true } });
}
