import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it } from 'vitest';
import type { Message, ToolResult } from '../protocol';
import { MessageItem } from './MessageItem';

afterEach(cleanup);

const base = { conversationId: 'c', createdAt: '2025-01-15T10:05:01Z' };

const toolCall: Message = {
  ...base,
  _id: 'msg-004',
  role: 'assistant',
  messageType: 'tool_call',
  content: "I'll search for recent AI news articles.",
  agentId: 'agent-789',
  toolCalls: [
    {
      id: 'call_abc123',
      type: 'mcp_tool',
      function: { name: 'web_search', arguments: '{"query":"AI news 2025","limit":10}' },
    },
  ],
};

const result: ToolResult = {
  toolCallId: 'call_abc123',
  toolName: 'web_search',
  result: { articles: [{ title: 'OpenAI Releases GPT-5' }] },
  success: true,
  executionTime: 2340,
};

describe('MessageItem', () => {
  it('shows a spinner on a tool call until its result arrives', () => {
    const { rerender } = render(
      <MessageItem message={toolCall} self="u" results={new Map()} superseded={false} />,
    );
    expect(screen.getByText('web_search')).toBeTruthy();
    expect(screen.getByTestId('tool-spinner')).toBeTruthy();
    expect(screen.getByLabelText('arguments of web_search').textContent).toContain('"AI news 2025"');
    rerender(
      <MessageItem
        message={toolCall}
        self="u"
        results={new Map([['call_abc123', result]])}
        superseded={false}
      />,
    );
    expect(screen.queryByTestId('tool-spinner')).toBeNull();
    expect(screen.getByTestId('tool-call').dataset.toolState).toBe('success');
    expect(screen.getByText(/done in 2\.3 s/)).toBeTruthy();
  });

  it('shows a failed tool call', () => {
    render(
      <MessageItem
        message={toolCall}
        self="u"
        results={new Map([['call_abc123', { ...result, success: false, error: 'rate limit' }]])}
        superseded={false}
      />,
    );
    expect(screen.getByTestId('tool-call').dataset.toolState).toBe('error');
    expect(screen.getByText(/failed: rate limit/)).toBeTruthy();
  });

  it('collapses a tool result by default and expands it', () => {
    const msg: Message = {
      ...base,
      _id: 'msg-005',
      role: 'tool',
      messageType: 'tool_result',
      name: 'web_search',
      content: 'Tool execution completed',
      toolResults: [result],
    };
    render(<MessageItem message={msg} self="u" results={new Map()} superseded={false} />);
    const toggle = screen.getByTestId('tool-result-toggle');
    expect(toggle.getAttribute('aria-expanded')).toBe('false');
    expect(screen.getByTestId('tool-result-body').closest('[hidden]')).not.toBeNull();
    fireEvent.click(toggle);
    expect(toggle.getAttribute('aria-expanded')).toBe('true');
    expect(screen.getByTestId('tool-result-body').closest('[hidden]')).toBeNull();
    expect(screen.getByTestId('tool-result-body').textContent).toContain('OpenAI Releases GPT-5');
  });

  it('renders thinking collapsible with its duration', () => {
    const msg: Message = {
      ...base,
      _id: 'msg-008',
      role: 'assistant',
      messageType: 'thinking',
      content: '',
      thinking: { content: 'I need to implement the sieve', visible: true, duration: 1200 },
    };
    render(<MessageItem message={msg} self="u" results={new Map()} superseded={false} />);
    expect(screen.getByTestId('thinking-toggle').textContent).toContain('1.2 s');
    fireEvent.click(screen.getByTestId('thinking-toggle'));
    expect(screen.getByText('I need to implement the sieve')).toBeTruthy();
  });

  it('renders markdown with code blocks and strips scripts', () => {
    const msg: Message = {
      ...base,
      _id: 'a',
      role: 'assistant',
      messageType: 'text',
      content: 'Here:\n\n```python\nprint(1)\n```\n<img src=x onerror="alert(1)"><script>alert(2)</script>',
      usage: { promptTokens: 45, completionTokens: 20, totalTokens: 65 },
      latency: 1200,
      cost: 0.00012,
    };
    const { container } = render(
      <MessageItem message={msg} self="u" results={new Map()} superseded={false} />,
    );
    expect(container.querySelector('pre code')?.textContent).toContain('print(1)');
    expect(container.querySelector('script')).toBeNull();
    expect(container.querySelector('img')?.getAttribute('onerror')).toBeNull();
    expect(screen.getByTestId('message-meta').textContent).toBe(
      '65 tokens (45 in / 20 out) · 1.2 s · $0.0001',
    );
  });

  it('renders error and system messages distinctly', () => {
    render(
      <>
        <MessageItem
          message={{ ...base, _id: 'e', role: 'assistant', messageType: 'error', content: 'x', error: 'model down' }}
          self="u"
          results={new Map()}
          superseded={false}
        />
        <MessageItem
          message={{ ...base, _id: 's', role: 'system', messageType: 'system', content: 'Conversation started' }}
          self="u"
          results={new Map()}
          superseded={false}
        />
      </>,
    );
    expect(screen.getByRole('alert').textContent).toContain('model down');
    expect(screen.getByLabelText('system message').textContent).toBe('Conversation started');
  });
});

describe('MessageItem states', () => {
  it('offers Retry on a message that failed to send, and shows a reply as a quote', () => {
    const failed: Message = {
      ...base,
      _id: 'local:cm-1',
      role: 'user',
      content: 'did it go?',
      createdBy: 'u',
      clientMessageId: 'cm-1',
      messageStatus: 'failed',
    };
    const retried: Message[] = [];
    const quoted: Message = { ...base, _id: 'msg-1', role: 'user', content: 'the original', createdBy: 'user-2' };
    render(
      <MessageItem
        message={failed}
        self="u"
        results={new Map()}
        superseded={false}
        quote={quoted}
        names={{ 'user-2': 'Bob' }}
        onRetry={(m) => retried.push(m)}
      />,
    );
    expect(screen.getByText('not sent')).toBeTruthy();
    fireEvent.click(screen.getByTestId('retry'));
    expect(retried.map((m) => m.clientMessageId)).toEqual(['cm-1']);
    expect(screen.getByTestId('reply-quote').textContent).toContain('Bob');
    expect(screen.getByTestId('reply-quote').textContent).toContain('the original');
  });

  it('shows an edited mark and a placeholder once deleted', () => {
    const edited: Message = { ...base, _id: 'm', role: 'user', content: 'v2', createdBy: 'u', editedAt: base.createdAt };
    const { rerender } = render(<MessageItem message={edited} self="u" results={new Map()} superseded={false} />);
    expect(screen.getByText('edited')).toBeTruthy();
    rerender(
      <MessageItem message={{ ...edited, content: '', deletedAt: base.createdAt }} self="u" results={new Map()} superseded={false} />,
    );
    expect(screen.getByText('This message was deleted.')).toBeTruthy();
  });
});
