import { act, cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Attachment } from '../protocol';
import { Composer, type Uploader } from './Composer';

afterEach(cleanup);

/** An uploader whose uploads the test finishes by hand. */
function fakeUploads() {
  const calls: Array<{
    file: File;
    progress: (sent: number, total: number) => void;
    resolve: (a: Attachment) => void;
    reject: (e: Error) => void;
  }> = [];
  const upload: Uploader = (file, progress) => {
    let resolve!: (a: Attachment) => void;
    let reject!: (e: Error) => void;
    const done = new Promise<Attachment>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    calls.push({ file, progress, resolve, reject });
    return { done, abort: () => reject(new Error('cancelled')) };
  };
  return { calls, upload };
}

function setup(upload: Uploader) {
  const onSend = vi.fn();
  render(
    <Composer
      disabled={false}
      busy={false}
      onSend={onSend}
      onStop={() => undefined}
      onTyping={() => undefined}
      onUpload={upload}
      conversationId="c1"
      replyTo={null}
      onCancelReply={() => undefined}
    />,
  );
  return onSend;
}

const att = (id: string, name: string): Attachment => ({ id, filename: name, mimeType: 'image/png', size: 4, url: `/v1/attachments/${id}` });

describe('Composer attachments', () => {
  it('uploads picked files with progress, sends the done ones by object, keeps failed ones to retry', async () => {
    const { calls, upload } = fakeUploads();
    const onSend = setup(upload);
    const input = screen.getByTestId('file-input') as HTMLInputElement;
    const a = new File([new Uint8Array(4)], 'a.png', { type: 'image/png' });
    const b = new File([new Uint8Array(8)], 'b.exe', { type: 'application/x-msdownload' });
    fireEvent.change(input, { target: { files: [a, b] } });
    expect(calls.map((c) => c.file.name)).toEqual(['a.png', 'b.exe']);
    act(() => calls[0].progress(2, 4));
    const chips = () => screen.getAllByTestId('pending-file');
    expect(chips()[0].dataset.state).toBe('uploading');
    expect(chips()[0].textContent).toContain('50%');
    expect((screen.getByTestId('send-button') as HTMLButtonElement).disabled).toBe(true);

    await act(async () => {
      calls[0].resolve(att('att-a', 'a.png'));
      calls[1].reject(new Error("Content-Type 'application/x-msdownload' is not accepted"));
    });
    expect(chips().map((c) => c.dataset.state)).toEqual(['done', 'failed']);
    expect(chips()[1].textContent).toContain('Failed: Content-Type');
    // Attachments only (no text) may be sent; the failed one stays for a retry or removal.
    fireEvent.click(screen.getByTestId('send-button'));
    expect(onSend).toHaveBeenCalledWith('', [att('att-a', 'a.png')]);
    expect(chips().map((c) => c.dataset.state)).toEqual(['failed']);
    fireEvent.click(screen.getByTestId('retry-upload'));
    expect(calls).toHaveLength(3);
    expect(chips()[0].dataset.state).toBe('uploading');
    fireEvent.click(screen.getByTestId('remove-upload'));
    expect(screen.queryAllByTestId('pending-file')).toHaveLength(0);
  });

  it('takes pasted files', () => {
    const { calls, upload } = fakeUploads();
    setup(upload);
    const file = new File([new Uint8Array(3)], 'shot.png', { type: 'image/png' });
    fireEvent.paste(screen.getByTestId('composer-input'), { clipboardData: { files: [file] } });
    expect(calls.map((c) => c.file.name)).toEqual(['shot.png']);
  });
});
