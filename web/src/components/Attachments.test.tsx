import { act, cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Attachments, FileAccess, formatSize, safeUrl } from './Attachments';

afterEach(cleanup);

describe('Attachments', () => {
  it('shows images inline (lightbox on click) and other files as chips with name, type and size', () => {
    render(
      <Attachments
        list={[
          { id: '1', filename: 'chart.png', mimeType: 'image/png', size: 2048, url: 'https://f.example/chart.png' },
          { id: '2', filename: 'report.pdf', mimeType: 'application/pdf', size: 1_234_567, url: 'https://f.example/r.pdf' },
        ]}
      />,
    );
    const img = screen.getByAltText('chart.png');
    expect(img.getAttribute('src')).toBe('https://f.example/chart.png');
    const chip = screen.getByTestId('attachment-file');
    expect(chip.textContent).toContain('report.pdf');
    expect(chip.textContent).toContain('application/pdf · 1.2 MB');
    expect(chip.querySelector('a')?.getAttribute('href')).toBe('https://f.example/r.pdf');
    fireEvent.click(screen.getByTestId('attachment-image'));
    expect(screen.getByTestId('lightbox')).toBeTruthy();
    fireEvent.keyDown(document, { key: 'Escape' });
    expect(screen.queryByTestId('lightbox')).toBeNull();
  });

  it('never links a hostile URL', () => {
    expect(safeUrl('javascript:alert(1)')).toBeNull();
    expect(safeUrl('data:text/html,<script>')).toBeNull();
    render(<Attachments list={[{ id: '1', filename: 'x.png', mimeType: 'image/png', size: 1, url: 'javascript:alert(1)' }]} />);
    expect(screen.queryByRole('img')).toBeNull();
    expect(screen.getByTestId('attachment-file').querySelector('a')).toBeNull();
    expect(formatSize(512)).toBe('512 B');
  });

  it('resolves gateway paths on the current gateway and falls back to the token once a link fails', async () => {
    const objectUrl = vi.fn(async () => 'blob:http://gw/abc');
    const files = { absolute: (url: string) => `http://gw:8001${url}`, objectUrl };
    render(
      <FileAccess.Provider value={files}>
        <Attachments
          list={[
            { id: 'att-1', filename: 'a.png', mimeType: 'image/png', size: 4, url: '/v1/attachments/att-1?exp=1&sig=x' },
            { id: 'att-2', filename: 'b.pdf', mimeType: 'application/pdf', size: 9, url: '/v1/attachments/att-2?exp=1&sig=y' },
          ]}
        />
      </FileAccess.Provider>,
    );
    const img = screen.getByAltText('a.png');
    expect(img.getAttribute('src')).toBe('http://gw:8001/v1/attachments/att-1?exp=1&sig=x');
    expect(screen.getByTestId('attachment-file').querySelector('a')?.getAttribute('href')).toBe(
      'http://gw:8001/v1/attachments/att-2?exp=1&sig=y',
    );
    await act(async () => {
      fireEvent.error(img);
    });
    expect(objectUrl).toHaveBeenCalledWith('att-1');
    expect(screen.getByAltText('a.png').getAttribute('src')).toBe('blob:http://gw/abc');
    fireEvent.error(screen.getByAltText('a.png'));
    expect(objectUrl).toHaveBeenCalledTimes(1); // once only
  });
});
