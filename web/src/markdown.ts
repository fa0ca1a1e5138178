/**
 * Markdown for text messages: `marked` (GFM, well kept, fast, no React coupling) renders, and
 * `DOMPurify` sanitizes the HTML before it reaches the page — message content is untrusted.
 */
import DOMPurify from 'dompurify';
import { Marked } from 'marked';

const marked = new Marked({ gfm: true, breaks: true, async: false });

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
